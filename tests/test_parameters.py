"""The command line: reference flag names and defaults, grouping, the --source abbreviation."""

from __future__ import annotations

import parameters


def test_reference_defaults():
    opt = parameters.parse([])
    expected = {
        "dataset": "cub200",
        "lr": 1e-5,
        "fc_lr": -1,
        "decay": 4e-4,
        "n_epochs": 150,
        "kernels": 6,
        "bs": 112,
        "seed": 1,
        "scheduler": "step",
        "gamma": 0.3,
        "tau": [1000],
        "optim": "adam",
        "loss": "margin",
        "batch_mining": "distance",
        "data_sampler": "class_random",
        "samples_per_class": 2,
        "embed_dim": 128,
        "not_pretrained": False,
        "arch": "resnet50_frozen_normalize",
        "storage_metrics": ["e_recall@1"],
        "evaluate_on_gpu": False,
        "no_train_metrics": False,
        "use_tv_split": False,
        "tv_split_by_samples": False,
        "tv_split_perc": 0.8,
        "augmentation": "base",
        "gpu": [0],
        "savename": "group_plus_seed",
        "log_online": False,
        "project": "Sample_Project",
        "group": "Sample_Group",
        "device": "auto",
        # plugin flags contributed by the registries
        "loss_triplet_margin": 0.2,
        "loss_margin_margin": 0.2,
        "loss_margin_beta": 1.2,
        "loss_margin_beta_lr": 5e-4,
        "loss_margin_nu": 0.0,
        "loss_margin_beta_constant": False,
        "loss_contrastive_pos_margin": 0.0,
        "loss_contrastive_neg_margin": 1.0,
        "loss_multisimilarity_pos_weight": 2.0,
        "loss_multisimilarity_neg_weight": 40.0,
        "loss_multisimilarity_margin": 0.1,
        "loss_multisimilarity_thresh": 0.5,
        "miner_distance_lower_cutoff": 0.5,
        "miner_distance_upper_cutoff": 1.4,
    }
    for key, value in expected.items():
        assert getattr(opt, key) == value, key


def test_source_abbreviation_sets_source_path():
    assert parameters.parse(["--source", "/data/x"]).source_path == "/data/x"


def test_help_lists_plugin_flags_grouped():
    text = parameters.build_parser().format_help()
    for heading in ("loss 'margin'", "batch miner 'distance'", "optimisation", "evaluation", "wandb"):
        assert heading in text
    assert "--loss_margin_beta_lr" in text and "--miner_distance_lower_cutoff" in text
    assert "one of: " in text  # valid plugin names are listed next to --loss etc.


def test_no_flag_for_the_api_key():
    text = parameters.build_parser().format_help()
    assert "wandb_key" not in text and "api_key" not in text
