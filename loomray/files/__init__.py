"""Files written and read safely: writes a crash cannot tear (``durable``), torch
files read as tensors only (``tensor_files``), folders of manifest-tagged Parquet
shards (``shards``), and one writer per folder (``locks``)."""
