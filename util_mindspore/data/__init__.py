"""Images in: ImageFolder data and its batch loader, upstream's transforms and augmentation (timm 0.9.2's, pixel
for pixel), mixup / cutmix targets, and the lists of images prediction reads. May import errors.py, files/ and
process/; no MindSpore."""
