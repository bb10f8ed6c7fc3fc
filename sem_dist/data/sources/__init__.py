"""Where images come from: one module per source kind (bundled digits, MNIST and CIFAR files, image folders,
Parquet, WebDataset tars), what they share (:mod:`.split`, :mod:`.plan`) and the registry that parses a source
spec and opens it (:mod:`.registry`)."""
