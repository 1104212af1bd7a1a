"""datasets.registry: the dataset switch of train_mvtec.py as one entry per dataset (issue 26 item 2)."""
import pytest

import datasets.registry as registry
from datasets.btad import BTADDataset
from datasets.mvtec import DATASET_SOURCES, MVTecDataset


def test_each_dataset_reads_its_layout_and_names_its_source():
    assert list(registry.DATASETS) == ["mvtec", "mpdd", "visa", "btad", "demo"]
    for name, entry in registry.DATASETS.items():
        assert entry.dataset is (BTADDataset if name == "btad" else MVTecDataset), name
        assert entry.source_hint == DATASET_SOURCES[name]


@pytest.mark.parametrize("name, download, fetched", [("mvtec", True, ["mvtec"]), ("mvtec", False, []),
                                                     ("btad", True, ["btad"]), ("demo", True, [])])
def test_a_folder_is_made_ready_as_the_script_did(name, download, fetched, tmp_path, monkeypatch):
    calls, made = [], []
    monkeypatch.setattr(registry, "download_dataset", lambda dataset, root: calls.append(dataset))
    monkeypatch.setattr(registry, "make_demo", lambda root: made.append(root))
    assert registry.DATASETS[name].ready(name, tmp_path, download) == tmp_path
    assert calls == fetched and made == ([tmp_path] if name == "demo" else [])


def test_raw_visa_is_converted_and_a_prepared_one_read_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "prepare_visa", lambda raw, out: out)
    assert registry.DATASETS["visa"].ready("visa", tmp_path, False) == tmp_path
    (tmp_path / "split_csv").mkdir()
    assert registry.DATASETS["visa"].ready("visa", tmp_path, False) == tmp_path / "visa_pytorch"
