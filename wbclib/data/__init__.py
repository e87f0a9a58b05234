"""Stage 1, data: the public sources and their importers, the readers of the course layout, augmentation."""
