"""The project's Kedro datasets: files replaced whole, so a failed save keeps the previous one."""

import json

import pytest
import yaml
from kedro.io.core import DatasetError, Version
from kedro_datasets.json import JSONDataset

from pnfs_pipeline.datasets import AtomicJSONDataset, AtomicYAMLDataset, CheckpointDataset


class Unwritable:
    """Breaks serialisation half-way through a document, as a crash mid-write would."""

    def __reduce__(self):
        raise TypeError("cannot serialise this")


@pytest.mark.parametrize("dataset_type, suffix", [(AtomicJSONDataset, "json"), (AtomicYAMLDataset, "yml")])
def test_a_failed_save_keeps_the_previous_file(tmp_path, dataset_type, suffix):
    path = tmp_path / "out" / f"report.{suffix}"
    dataset = dataset_type(filepath=str(path), save_args={"sort_keys": False} if suffix == "yml" else {"indent": 2})
    dataset.save({"first": [1, 2], "b": "x"})
    assert dataset.load() == {"first": [1, 2], "b": "x"}
    before = path.read_bytes()
    with pytest.raises(DatasetError, match="cannot serialise this|not JSON serializable"):
        dataset.save({"first": [3, 4], "b": Unwritable()})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_the_stock_json_dataset_truncates_on_the_same_failure(tmp_path):
    # what the atomic datasets guard against: the old file is already gone half-way through
    path = tmp_path / "report.json"
    stock = JSONDataset(filepath=str(path))
    stock.save({"first": [1, 2]})
    with pytest.raises(DatasetError):
        stock.save({"first": [3, 4], "b": Unwritable()})
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())


def test_versioned_saves_and_loads_as_the_stock_datasets(tmp_path):
    genotype = AtomicYAMLDataset(filepath=str(tmp_path / "genotype.yml"), version=Version(None, None), save_args={"sort_keys": False})
    genotype.save({"format": "g", "parts": {"head": 1}})
    files = list((tmp_path / "genotype.yml").glob("*/genotype.yml"))
    assert len(files) == 1 and yaml.safe_load(files[0].read_text()) == {"format": "g", "parts": {"head": 1}}
    assert list(yaml.safe_load(files[0].read_text())) == ["format", "parts"]  # save_args apply
    assert genotype.load()["parts"] == {"head": 1}
    metrics = AtomicJSONDataset(filepath=str(tmp_path / "m.json"), save_args={"indent": 2})
    metrics.save({"AP": 0.5})
    assert (tmp_path / "m.json").read_text() == '{\n  "AP": 0.5\n}'
    checkpoints = CheckpointDataset(filepath=str(tmp_path / "c.pt"))
    checkpoints.save({"epoch": 3})
    assert checkpoints.load() == {"epoch": 3}
