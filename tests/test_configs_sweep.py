"""Sweeps in train.dicts: one dictionary per combination, named by its values; bad sweeps refused."""

import pytest

from actdict.config import ConfigError, build, load_experiment, section


def test_a_sweep_expands_into_one_dictionary_per_combination_named_by_its_values(tmp_path):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n"
                   "    - {name: l1, variant: sae_l1, k: 64, params: {lam2: 0.2},\n"
                   "       sweep: {lr: [0.001, 3.0e-3], params: {lam1: [0.1, 1.0e-5]}}}\n"
                   "    - {name: v, variant: vaease, k: 32}\n"
                   "    - {name: t, variant: sae_topk, sweep: {seed: [0, 1, 2], k: [16]}}\n")
    with pytest.raises(ConfigError, match=r"no list item 'l1_lr-0' .*; the dictionaries of a sweep are set "
                                          r"through its item \(train.dicts.l1.FIELD=...\) or its sweep"):
        load_experiment(cfg, ["train.dicts.l1_lr-0.001_lam1-0.1.k=48"])  # a swept name: '.' cuts it
    dicts = section(load_experiment(cfg, ["train.dicts.l1.k=48"]), "train", TrainConfig).dicts
    assert [d.name for d in dicts] == ["l1_lr-0.001_lam1-0.1", "l1_lr-0.001_lam1-1e-05",
                                       "l1_lr-0.003_lam1-0.1", "l1_lr-0.003_lam1-1e-05", "v",
                                       "t_seed-0_k-16", "t_seed-1_k-16", "t_seed-2_k-16"]
    assert [(d.lr, d.params, d.k) for d in dicts[:4]] == [
        (lr, {"lam2": 0.2, "lam1": lam1}, 48)  # the override of the base item reaches every swept one
        for lr in (0.001, 0.003) for lam1 in (0.1, 1e-5)]
    assert [(d.seed, d.k, d.variant) for d in dicts[5:]] == [(s, 16, "sae_topk") for s in (0, 1, 2)]
    assert dicts[4] == build(TrainConfig, {"dicts": [{"name": "v", "variant": "vaease", "k": 32}]}).dicts[0]


@pytest.mark.parametrize("sweep, message", [
    ("{variant: [vae, sae_l1]}", r"dicts\[a\].sweep: cannot sweep 'variant'; valid: \['k', 'lr', 'seed'\]"),
    ("{k: 8}", r"train.dicts\[a\].sweep.k: expected a non-empty list of values, got 8"),
    ("{params: {lam1: []}}", r"sweep.params.lam1: expected a non-empty list"),
    ("{lr: [0.1, 0.1]}", r"sweep.lr: a value is listed twice"),
    ("{params: {lam2: [1, 2, 1.0]}}", r"sweep.params.lam2: a value is listed twice: \[1, 2, 1.0\]"),
    ("{k: [8, 16]}", r"sweep.k: also set outside the sweep \(4\)"),
    ("{params: {lam1: [1, 2]}}", r"sweep.params.lam1: also set outside the sweep \(0.5\)"),
    ("[1, 2]", r"train.dicts\[a\].sweep: expected a mapping"),
    ("{params: [1, 2]}", r"sweep.params: expected a mapping of the variant's params to lists of values "
                         r"\(\{lam1: \[0.1, 0.3\]\}\), got \[1, 2\]"),
    ("{params: {}}", r"sweep.params: expected a mapping of the variant's params .*, got \{\}"),
    (f"{{lr: {list(range(1, 11))}, seed: {list(range(10))}, params: {{lam2: {list(range(11))}}}}}",
     r"10 x 10 x 11 combinations; at most 1000 dictionaries per sweep"),  # checked before expanding
])
def test_a_bad_sweep_is_a_config_error_naming_it(tmp_path, sweep, message):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    item = f"{{name: a, variant: sae_l1, k: 4, params: {{lam1: 0.5}}, sweep: {sweep}}}"
    cfg.write_text(f"train:\n  dicts:\n    - {item}\n")
    with pytest.raises(ConfigError, match=message):
        section(load_experiment(cfg), "train", TrainConfig)



@pytest.mark.parametrize("params", ["null", "[1, 2]", "x"])
def test_a_sweep_of_params_beside_params_that_are_no_mapping_is_a_config_error(tmp_path, params):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"train:\n  dicts:\n    - {{name: a, variant: sae_l1, params: {params}, "
                   "sweep: {params: {lam1: [0.1, 1]}}}\n")
    with pytest.raises(ConfigError, match=r"^train.dicts\[a\].params: expected a mapping of the variant's "
                       r"params \(the sweep adds its own to it\), got (None|\[1, 2\]|'x')$"):
        section(load_experiment(cfg), "train", TrainConfig)


def test_a_swept_key_set_in_the_yaml_is_swept_from_the_command_line_once_an_override_unsets_it(tmp_path):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n    - {name: a, variant: sae_topk, k: 4, params: {topk: 2}}\n")
    sweep = "train.dicts.a.sweep={k: [8, 16], params: {topk: [1, 3]}}"
    with pytest.raises(ConfigError, match=r"sweep.k: also set outside the sweep \(4\); set it in one place "
                       r"\(an override train.dicts.a.k=null unsets it\)$"):
        section(load_experiment(cfg, [sweep]), "train", TrainConfig)
    data = load_experiment(cfg, [sweep, "train.dicts.a.k=null", "train.dicts.a.params.topk=null"])
    assert [(d.name, d.k, d.params) for d in section(data, "train", TrainConfig).dicts] == [
        ("a_k-8_topk-1", 8, {"topk": 1}), ("a_k-8_topk-3", 8, {"topk": 3}),
        ("a_k-16_topk-1", 16, {"topk": 1}), ("a_k-16_topk-3", 16, {"topk": 3})]


def test_an_error_in_a_dictionary_after_a_sweep_names_it_not_its_index_in_the_expanded_list(tmp_path):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n    - {name: a, variant: sae_l1, sweep: {seed: [0, 1, 2]}}\n"
                   "    - {name: b, variant: sae_topk, params: null}\n")  # the YAML's item 1, the list's 3
    with pytest.raises(ConfigError, match=r"^train.dicts\[b\].params: expected a mapping, got None$"):
        section(load_experiment(cfg), "train", TrainConfig)


def test_a_sweep_set_to_null_from_the_command_line_trains_the_one_dictionary_its_item_describes(tmp_path):
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n    - {name: a, variant: sae_l1, k: 4, sweep: {seed: [0, 1]}}\n")
    dicts = section(load_experiment(cfg, ["train.dicts.a.sweep=null"]), "train", TrainConfig).dicts
    assert [(d.name, d.k, d.seed) for d in dicts] == [("a", 4, None)]


def test_a_swept_value_with_a_slash_is_refused_on_every_platform_naming_the_key_and_an_item_of_its_own(
        tmp_path):
    """A sweep over a string holding '/' named a dictionary 'l1_act-relu/2_seed-0' (a nested folder), refused
    by the dictionary's name check without a word of the sweep, whose names are not the user's to change:
    the refusal now names the swept key and the item of its own that does the same, which is then taken."""
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n    - {name: l1, variant: sae_l1, "
                   "sweep: {params: {act: [relu, relu/2]}, seed: [0, 1]}}\n")
    with pytest.raises(ConfigError) as e:
        section(load_experiment(cfg), "train", TrainConfig)
    assert str(e.value) == (
        "train.dicts[l1].sweep.params.act: the value 'relu/2' puts '/' into the names of its dictionaries "
        "(l1_act-relu/2...), which would make a nested folder dicts/<name>/... on every platform: take it "
        "out of the sweep into an item of train.dicts of its own, which names itself ({name: l1_act-relu-2, "
        'params: {act: "relu/2"}, ...}, its sweep of the other keys kept)')
    cfg.write_text("train:\n  dicts:\n    - {name: l1, variant: sae_l1, sweep: {params: {act: [relu]}, "
                   "seed: [0, 1]}}\n    - {name: l1_act-relu-2, variant: sae_l1, params: {act: \"relu/2\"}, "
                   "sweep: {seed: [0, 1]}}\n")
    dicts = section(load_experiment(cfg), "train", TrainConfig).dicts
    assert [(d.name, d.params["act"]) for d in dicts] == [
        ("l1_act-relu_seed-0", "relu"), ("l1_act-relu_seed-1", "relu"),
        ("l1_act-relu-2_seed-0", "relu/2"), ("l1_act-relu-2_seed-1", "relu/2")]


def test_on_windows_a_swept_mapping_is_refused_naming_the_key_and_posix_systems_keep_its_names(
        tmp_path, monkeypatch):
    """A sweep over mappings names its dictionaries by their JSON ('l1_act-{"a": 1}'), whose ':' and '"'
    Windows gives no folder: there it was refused as the dictionary name to 'rename', which the user cannot;
    it now names the swept key and the item of its own. Linux and macOS keep the names they made."""
    import actdict.names
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("train:\n  dicts:\n    - {name: l1, variant: sae_l1, sweep: {params: {act: [{a: 1}]}}}\n")
    assert [d.name for d in section(load_experiment(cfg), "train", TrainConfig).dicts] == ['l1_act-{"a": 1}']
    monkeypatch.setattr(actdict.names, "WINDOWS", True)
    with pytest.raises(ConfigError) as e:
        section(load_experiment(cfg), "train", TrainConfig)
    assert str(e.value) == (
        "train.dicts[l1].sweep.params.act: the value {'a': 1} puts '\":' into the names of its dictionaries "
        "(l1_act-{\"a\": 1}...), which would make a name Windows cannot give a folder (Windows takes none of "
        "'\":' in a file name): take it out of the sweep into an item of train.dicts of its own, which names "
        "itself ({name: l1_act-a-1, params: {act: {\"a\": 1}}, ...}, its sweep of the other keys kept)")
    cfg.write_text('train:\n  dicts:\n    - {name: l1_act-a-1, params: {act: {"a": 1}}, variant: sae_l1}\n')
    assert [d.name for d in section(load_experiment(cfg), "train", TrainConfig).dicts] == ["l1_act-a-1"]


def test_on_windows_a_swept_value_that_would_end_the_names_with_a_dot_is_refused_naming_the_key(
        tmp_path, monkeypatch):
    """A string value ending in '.' or ' ', swept last, ends its dictionaries' names with it, which Windows
    drops from a folder's name: it was refused as the dictionary name to 'rename', which a sweep's user
    cannot; it now names the swept key and the item of its own. Swept before another key, or on Linux and
    macOS, the names are kept."""
    import actdict.names
    from actdict.train.config import TrainConfig

    cfg = tmp_path / "sweep.yaml"
    item = "train:\n  dicts:\n    - {name: l1, variant: sae_l1, sweep: %s}\n"
    cfg.write_text(item % "{seed: [0], params: {act: [relu.]}}")
    names = [d.name for d in section(load_experiment(cfg), "train", TrainConfig).dicts]
    assert names == ["l1_seed-0_act-relu."]
    monkeypatch.setattr(actdict.names, "WINDOWS", True)
    with pytest.raises(ConfigError) as e:
        section(load_experiment(cfg), "train", TrainConfig)
    assert str(e.value) == (
        "train.dicts[l1].sweep.params.act: the value 'relu.' ends the names of its dictionaries with '.' "
        "(l1_act-relu....), which would make a name Windows cannot give a folder (Windows drops a file "
        "name's trailing dot or space): take it out of the sweep into an item of train.dicts of its own, "
        'which names itself ({name: l1_act-relu, params: {act: "relu."}, ...}, its sweep of the other keys '
        "kept)")
    cfg.write_text(item % "{params: {act: [relu.]}, seed: [0]}")
    names = [d.name for d in section(load_experiment(cfg), "train", TrainConfig).dicts]
    assert names == ["l1_act-relu._seed-0"]


def test_a_swept_value_with_a_nul_is_refused_as_a_name_no_file_system_takes():
    """A NUL was explained as making 'a nested folder' (only '/' does)."""
    from actdict.train.config import _check_label

    with pytest.raises(ConfigError, match=r"which would make a name no file system takes \(NUL\): take it .*"
                                          r"\{name: l1_act-a-b, params: \{act: \"a\\u0000b\"\}"):
        _check_label("act-a\0b", "a\0b", ("params", "act"), "train.dicts[l1].sweep", "l1")
