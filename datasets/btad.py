"""BTAD (products 01, 02, 03): `train/ok`, `test/{ok,ko}`, `ground_truth/ko/<stem>.<png|bmp>`.

Images are .bmp or .png depending on the product, and so are masks, so a mask is looked up by
stem. Some training images are anomalous (BTAD is "noisy"); they are kept as they are.
"""
from datasets.common import IMAGE_EXTENSIONS
from datasets.mvtec import DATASET_SOURCES, MVTecDataset


class BTADDataset(MVTecDataset):
    """One product, one split of BTAD; same interface and sample dict as MVTecDataset."""

    good_folder = "ok"
    layout_name = "BTAD"
    layout = "<root>/<product>/train/ok, <root>/<product>/test/{ok,ko}, <root>/<product>/ground_truth/ko/<name>.png"

    def __init__(self, root, class_name, split, image_size=256, crop_size=0, source_hint=DATASET_SOURCES["btad"],
                 resize="pil"):
        super().__init__(root, class_name, split, image_size, crop_size, source_hint, resize)

    def mask_candidates(self, class_dir, defect, image_path):
        return [class_dir / "ground_truth" / defect / f"{image_path.stem}{ext}" for ext in IMAGE_EXTENSIONS]
