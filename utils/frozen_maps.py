"""A frozen model over a dataset, as train_mvtec.py evaluates it: the model inputs of each batch (the frozen
encoder's features, or the images) and the model's raw maps (utils.evaluation.ClassMaps). Under torchrun each
process runs its shard of the dataset and every process gets the whole, in order (utils.distributed)."""
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils import distributed
from utils.evaluation import collect_maps


@dataclass
class MapReader:
    """Reads datasets in order through a DataLoader (`loader`: its batch_size and num_workers). `method` is the
    models.METHODS entry: `encoder` gives the model input when it trains on "features", and with `align_input`
    (None: no alignment head reads features) its head_input gives what an alignment head reads."""
    encoder: torch.nn.Module
    method: object
    device: torch.device
    loader: dict
    rank: int = 0
    world: int = 1
    memory_format: torch.memory_format = torch.contiguous_format
    align_input: str = None

    def inputs(self, dataset, desc):
        """(model input, labels, masks) per batch of this process's shard of the dataset, in order."""
        shard = distributed.shard(dataset, self.rank, self.world)
        for batch in tqdm(DataLoader(shard, **self.loader), desc=desc, leave=False, disable=self.rank > 0):
            images = batch["image"].to(self.device, memory_format=self.memory_format)
            with torch.no_grad():
                features = self.encoder(images) if self.method.trains_on == "features" else {"image": images}
            yield features, batch["label"], batch["mask"][:, 0].bool()

    def maps(self, model, dataset, desc, inputs=None, probe=None):
        """ClassMaps of the frozen model over the whole dataset (`inputs`: this process's, made before; else read
        now; `probe`: see collect_maps)."""
        inputs = inputs or self.inputs(dataset, desc)
        head_input = None if self.align_input is None else (
            lambda model, model_input: self.method.head_input(model, model_input, self.align_input))
        return distributed.gathered(collect_maps(model, inputs, head_input, probe), len(dataset), self.world)
