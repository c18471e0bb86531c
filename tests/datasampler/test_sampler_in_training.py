"""A storage sampler inside main.py: the memory is filled before training and updated every step."""

from __future__ import annotations

import pytest
import torch

import datasampler
import main


@pytest.mark.slow
def test_greedy_coreset_run_fills_and_updates_its_memory(tmp_path, monkeypatch):
    built = []
    original = datasampler.select

    def spy(name, opt, labels):
        built.append(original(name, opt, labels))
        return built[-1]

    monkeypatch.setattr(datasampler, "select", spy)
    calls = {"update": 0}
    update = datasampler.greedy_coreset.GreedyCoresetSampler.update_storage

    def counting_update(self, embeddings, indices):
        calls["update"] += 1
        before = self.storage[torch.as_tensor(indices)].clone()
        update(self, embeddings, indices)
        assert not torch.equal(before, self.storage[torch.as_tensor(indices)])

    monkeypatch.setattr(datasampler.greedy_coreset.GreedyCoresetSampler, "update_storage", counting_update)
    summary = main.main([
        "--dataset", "digits", "--arch", "smallcnn_normalize", "--loss", "margin", "--batch_mining", "distance",
        "--data_sampler", "greedy_coreset", "--data_batchmatch_bigbs", "120", "--n_epochs", "1",
        "--bs", "60", "--samples_per_class", "4", "--kernels", "0", "--device", "cpu", "--no_progress",
        "--embed_dim", "16", "--evaluation_metrics", "e_recall@1", "--no_train_metrics",
        "--save_path", str(tmp_path), "--savename", "gc",
    ])  # fmt: skip
    (sampler,) = built
    assert sampler.storage is not None and sampler.storage.shape == (len(sampler.labels), 16)
    assert calls["update"] == len(sampler) > 0
    assert summary["metrics"]["testing"]["e_recall@1"] > 0
