from pathlib import Path

import pytest
import yaml

from mt.config import DATA_ROOT_ENV, config_from_dict, load_config, parse_duration, save_config
from mt.errors import MTError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = "data:\n  train: {src: a.de, tgt: a.en}\n"


def test_unknown_key_names_key_file_and_closest_match(tmp_path):
    path = write(tmp_path, MINIMAL + "model:\n  d_modle: 128\n")
    with pytest.raises(MTError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: unknown key 'model.d_modle' (did you mean 'model.d_model'?)"


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(MTError, match=r"unknown key 'trian' \(did you mean 'train'\?\)"):
        load_config(write(tmp_path, MINIMAL + "trian: {}\n"))


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(MTError, match=r"c.yaml: train.max_steps: expected an integer, got 'many'"):
        load_config(write(tmp_path, MINIMAL + "train: {max_steps: many}\n"))
    with pytest.raises(MTError, match=r"^command line: tokenizer.joint: expected true or false, got 'yes please'$"):
        load_config(write(tmp_path, MINIMAL), ["tokenizer.joint=yes please"])


def test_choice_lists_allowed_values(tmp_path):
    with pytest.raises(MTError, match=r"model.norm: 'middle' is not allowed; choose one of: pre, post"):
        load_config(write(tmp_path, MINIMAL + "model: {norm: middle}\n"))


def test_value_checks_name_the_key(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(MTError, match=r"model.heads: must divide model.d_model \(256\), got 3"):
        load_config(path, ["model.heads=3"])
    with pytest.raises(MTError, match=r"model.dropout: must be in \[0, 1\), got 1.5"):
        load_config(path, ["model.dropout=1.5"])
    with pytest.raises(MTError, match=r"train.max_time: '10 minutes' is not a duration"):
        load_config(path, ["train.max_time=10 minutes"])
    with pytest.raises(MTError, match=r"model.tie_embeddings: 'all' needs a shared vocabulary"):
        load_config(path, ["tokenizer.joint=false", "model.tie_embeddings=all"])
    with pytest.raises(MTError, match=r"data.train: needs both 'src' and 'tgt'"):
        load_config(write(tmp_path, "model: {}\n"))


def test_overrides_are_typed_and_validated(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), ["train.max_steps=123", "train.lr=5e-4", "model.norm=post"])
    assert (config.train.max_steps, config.train.lr, config.model.norm) == (123, 5e-4, "post")
    with pytest.raises(MTError, match=r"^command line: unknown key 'train.max_stpes' \(did you mean 'train.max_steps'\?\)$"):
        load_config(write(tmp_path, MINIMAL), ["train.max_stpes=1"])
    with pytest.raises(MTError, match=r"override 'train.max_steps' must look like key=value"):
        load_config(write(tmp_path, MINIMAL), ["train.max_steps"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(MTError, match=r"config file '.*nope.yaml' not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(MTError, match=r"c.yaml: invalid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))


def test_yaml_paths_resolve_against_data_root_relative_to_config_file(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "c.yaml"
    path.write_text("data:\n  root: ../corpora\n  train: {src: t.de, tgt: t.en}\n")
    monkeypatch.chdir(tmp_path / "cfg")
    config = load_config(path)
    assert config.data.root == str(tmp_path / "corpora")
    assert config.data.train.src == str(tmp_path / "corpora" / "t.de")


def test_environment_variable_replaces_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "elsewhere"))
    config = load_config(write(tmp_path, "data:\n  root: ../corpora\n  train: {src: t.de, tgt: t.en}\n"))
    assert config.data.train.tgt == str(tmp_path / "elsewhere" / "t.en")


def test_command_line_paths_are_relative_to_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, "data:\n  root: /somewhere\n  train: {src: t.de, tgt: t.en}\n"),
                         ["data.train.src=my.de"])
    assert config.data.train.src == str(tmp_path / "my.de")
    assert config.data.train.tgt == "/somewhere/t.en"


def test_shipped_config_finds_shared_data(monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    config = load_config(REPO / "configs" / "multi30k_de_en.yaml")
    assert Path(config.data.train.src) == (REPO.parent / "shared" / "data" / "multi30k" / "train.de").resolve()


def test_saved_config_round_trips(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), ["train.max_steps=7", "model.activation=gelu"])
    save_config(config, tmp_path / "run" / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()))
    assert again == config


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("25m", 1500), ("2h", 7200), ("1h30m", 5400),
                                          ("45", 45), ("", 0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


# ---------------------------------------------------------------- several training corpora, cache, tokenizer


MIXED = ("data:\n  root: corpora\n  train:\n    - {src: real.de, tgt: real.en}\n"
         "    - {src: bt.de, tgt: bt.en, weight: 0.5}\n")


def test_training_corpora_as_a_weighted_list(tmp_path):
    config = load_config(write(tmp_path, MIXED))
    first, second = config.data.train_corpora()
    assert (first.src, first.weight) == (str(tmp_path / "corpora" / "real.de"), 1.0)
    assert (second.tgt, second.weight) == (str(tmp_path / "corpora" / "bt.en"), 0.5)
    assert config_from_dict(config.to_dict()).data.train == config.data.train  # saved and rebuilt
    single = load_config(write(tmp_path, MINIMAL))
    assert single.data.train_corpora() == [single.data.train]


def test_list_items_can_be_overridden_by_index(tmp_path):
    config = load_config(write(tmp_path, MIXED), ["data.train.1.weight=3", "data.train.0.src=here.de"])
    assert config.data.train[1].weight == 3.0
    assert config.data.train[0].src == str(Path.cwd() / "here.de")  # typed on the command line: cwd
    with pytest.raises(MTError, match=r"^override 'data.train.5.weight=1': '5' is not an index of a list of 2$"):
        load_config(write(tmp_path, MIXED), ["data.train.5.weight=1"])


def test_bad_weights_and_corpus_list_errors_name_the_item(tmp_path):
    with pytest.raises(MTError, match=r"c.yaml: data.train\[1\].weight: must be a positive number, got 0.0$"):
        load_config(write(tmp_path, MIXED.replace("weight: 0.5", "weight: 0")))
    with pytest.raises(MTError, match=r"data.train\[1\].weight: expected a number, got 'lots'"):
        load_config(write(tmp_path, MIXED.replace("weight: 0.5", "weight: lots")))
    with pytest.raises(MTError, match=r"unknown key 'data.train\[0\].scr' \(did you mean 'data.train\[0\].src'\?\)"):
        load_config(write(tmp_path, MIXED.replace("{src: real.de", "{scr: real.de")))
    with pytest.raises(MTError, match=r"data.train\[1\]: needs both 'src' and 'tgt'"):
        load_config(write(tmp_path, MIXED.replace("tgt: bt.en, ", "")))
    with pytest.raises(MTError, match=r"data.valid.weight: only training corpora are weighted, got 2.0"):
        load_config(write(tmp_path, MINIMAL + "  valid: {src: v.de, tgt: v.en, weight: 2}\n"))
    with pytest.raises(MTError, match=r"data.train: expected a non-empty list, got \[\]"):
        load_config(write(tmp_path, "data:\n  train: []\n"))
    with pytest.raises(MTError, match=r"data.valid.train_tokenizer: only training corpora train the tokenizer, "
                                      r"got False"):
        load_config(write(tmp_path, MINIMAL + "  valid: {src: v.de, tgt: v.en, train_tokenizer: false}\n"))
    with pytest.raises(MTError, match=r"data.train\[\*\].train_tokenizer: at least one training corpus must train "
                                      r"the tokenizer, got \[False, False\]$"):
        load_config(write(tmp_path, MIXED), ["data.train.0.train_tokenizer=false", "data.train.1.train_tokenizer=no"])
    with pytest.raises(MTError, match=r"data.train.train_tokenizer: at least one .*, got False$"):
        load_config(write(tmp_path, MINIMAL), ["data.train.train_tokenizer=false"])
    second = load_config(write(tmp_path, MIXED), ["data.train.1.train_tokenizer=false"]).data.train[1]
    assert second.train_tokenizer is False


def test_tokenizer_scale_keys_and_cache_dir(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + "  cache_dir: cache\ntokenizer:\n  sample_sentences: 5000\n"
                                                   "  byte_fallback: true\n  user_symbols: ['<2de>', '<2en>']\n"))
    assert config.data.cache_dir == str(tmp_path / "cache")  # relative to the config file
    tok = config.tokenizer
    assert (tok.sample_sentences, tok.byte_fallback, tok.user_symbols) == (5000, True, ["<2de>", "<2en>"])
    with pytest.raises(MTError, match=r"tokenizer.user_symbols: must be a list of non-empty strings without spaces"):
        load_config(write(tmp_path, MINIMAL), ["tokenizer.user_symbols=['<2 de>']"])
    with pytest.raises(MTError, match=r"tokenizer.sample_sentences: must be >= 0"):
        load_config(write(tmp_path, MINIMAL), ["tokenizer.sample_sentences=-1"])


def test_yaml_1_1_words_stay_strings_where_a_string_is_expected(tmp_path):
    """`no` is Norwegian, `off` a file name, `1:30` not 90: string fields keep the text as written."""
    path = write(tmp_path, "data:\n  src_lang: no\n  tgt_lang: on\n  train: {src: off, tgt: 1:30}\n"
                           "  valid: {dataset: wmt14, name: 010, split: null}\nrun_dir: 2020-01-01\n")
    c = load_config(path)
    assert (c.data.src_lang, c.data.tgt_lang, c.run_dir) == ("no", "on", "2020-01-01")
    assert (Path(c.data.train.src).name, Path(c.data.train.tgt).name) == ("off", "1:30")
    assert (c.data.valid.name, c.data.valid.split) == ("010", "null")
    c = load_config(write(tmp_path, MINIMAL), ["data.src_lang=no", "data.train.src=off", "data.tgt_lang=yes"])
    assert (c.data.src_lang, c.data.tgt_lang, Path(c.data.train.src).name) == ("no", "yes", "off")
    with pytest.raises(MTError, match=r"train.max_time: '1:30' is not a duration"):
        load_config(write(tmp_path, MINIMAL), ["train.max_time=1:30"])
    with pytest.raises(MTError, match=r"train.max_time: '1:30' is not a duration"):
        load_config(write(tmp_path, MINIMAL + "train: {max_time: 1:30}\n"))


def test_typed_fields_still_read_yaml_values(tmp_path):
    c = load_config(write(tmp_path, MINIMAL + "  test: null\ntokenizer: {joint: no}\n"
                                               "train: {max_steps: 100, lr: 5e-4, adam_betas: [0.9, 0.98]}\n"),
                    ["train.compile=yes", "train.warmup_steps=0x10"])
    assert c.data.test is None and c.tokenizer.joint is False and c.train.compile is True
    assert (c.train.max_steps, c.train.lr, c.train.adam_betas, c.train.warmup_steps) == (100, 5e-4, [0.9, 0.98], 16)


@pytest.mark.parametrize("override, message", [
    ("model.d_model=15", r"model.d_model: sinusoidal positions need an even size \(a sine and a cosine per frequency\), got 15"),
    ("decode.length_penalty=nan", r"decode.length_penalty: expected a finite number, got nan"),
    ("train.lr=.inf", r"train.lr: expected a finite number, got inf"),
    ("data.max_len_ratio=-1", r"data.max_len_ratio: must be at least 1 \(a ratio of longer to shorter\), got -1.0"),
    ("data.max_len_ratio=0.5", r"data.max_len_ratio: must be at least 1"),
])
def test_values_that_would_fail_later_are_refused_at_load(tmp_path, override, message):
    overrides = [override, "model.heads=5"] if "d_model" in override else [override]
    with pytest.raises(MTError, match=r"^(command line|\S+c.yaml): " + message):
        load_config(write(tmp_path, MINIMAL), overrides)
    assert load_config(write(tmp_path, MINIMAL), ["model.d_model=15", "model.heads=5",
                                                  "model.positions=learned"]).model.d_model == 15


@pytest.mark.parametrize("overrides, message", [
    (["model.positions=learned", "model.max_positions=7", "data.max_len=7"],
     r"model.max_positions: learned positions must cover data.max_len \(7\) \+ 1 for BOS/EOS = 8, got 7"),
])
def test_learned_positions_must_cover_the_training_lengths(tmp_path, overrides, message):
    with pytest.raises(MTError, match=r"c.yaml: " + message):
        load_config(write(tmp_path, MINIMAL), overrides)
    assert load_config(write(tmp_path, MINIMAL), overrides[:2] + ["data.max_len=6"]).model.max_positions == 7


def test_base_file_is_merged_under_the_including_file(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text(
        "data:\n  root: corpora\n  max_len: 50\n  train: {src: t.de, tgt: t.en}\n"
        "model: {d_model: 128, heads: 2}\ntrain: {max_steps: 100, adam_betas: [0.9, 0.99]}\n")
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text("base: ../shared/base.yaml\ndata: {src_lang: fr, train: {src: t.fr}}\n"
                      "model: {heads: 4}\ntrain: {adam_betas: [0.8, 0.9]}\n")
    config = load_config(recipe, ["train.max_steps=7"])
    assert (config.data.src_lang, config.data.max_len) == ("fr", 50)
    assert (config.model.d_model, config.model.heads) == (128, 4)  # mappings merge key by key
    assert config.train.adam_betas == [0.8, 0.9] and config.train.max_steps == 7  # lists replaced whole
    # a relative data.root is relative to the file that sets it (the base), not to the recipe
    root = tmp_path / "shared" / "corpora"
    assert (config.data.root, config.data.train.src, config.data.train.tgt) == (
        str(root), str(root / "t.fr"), str(root / "t.en"))


def test_base_cycle_and_missing_base_are_errors_naming_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n" + MINIMAL)
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(MTError) as e:
        load_config(tmp_path / "a.yaml")
    assert str(e.value) == (f"{tmp_path / 'b.yaml'}: base: config files include each other in a cycle: "
                            "a.yaml -> b.yaml -> a.yaml")
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(MTError, match=r"cycle: c.yaml -> c.yaml$"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: nowhere.yaml\n" + MINIMAL)
    with pytest.raises(MTError, match=rf"^{tmp_path / 'd.yaml'}: base: config file 'nowhere.yaml' not found"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("base: [a.yaml]\n" + MINIMAL)
    with pytest.raises(MTError, match=r"e.yaml: base: expected the path of a config file, got \['a.yaml'\]"):
        load_config(tmp_path / "e.yaml")


DIRECTIONS = ["de_en", "fr_en", "cs_en", "en_de", "en_fr", "en_cs"]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_recipes_name_their_languages_and_files_truthfully(direction, monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    src, tgt = direction.split("_")
    config = load_config(REPO / "configs" / f"multi30k_{direction}.yaml")
    data = config.data
    assert (data.src_lang, data.tgt_lang) == (src, tgt)
    shared = (REPO.parent / "shared" / "data" / "multi30k").resolve()
    for corpus, split in [(data.train, "train"), (data.valid, "val"), (data.test, "test2016")]:
        assert (corpus.src, corpus.tgt) == (str(shared / f"{split}.{src}"), str(shared / f"{split}.{tgt}"))
    # defined in updates: the schedule decays over max_steps, no wall-clock budget shapes it
    assert config.train.max_steps > 0 and config.train.lr_schedule == "budget" and config.train.max_time == ""
    assert config.run_dir == f"runs/multi30k_{direction}"


def test_many_to_english_recipe_trains_on_all_three_sources_and_validates_de_en(monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    config = load_config(REPO / "configs" / "multi30k_xx_en.yaml")
    data = config.data
    shared = (REPO.parent / "shared" / "data" / "multi30k").resolve()
    assert [(c.src, c.tgt, c.weight) for c in data.train] == [
        (str(shared / f"train.{lang}"), str(shared / "train.en"), 1.0) for lang in ("de", "fr", "cs")]
    assert (data.src_lang, data.tgt_lang) == ("de", "en")
    assert (data.valid.src, data.test.src) == (str(shared / "val.de"), str(shared / "test2016.de"))
    assert config.tokenizer.joint and config.tokenizer.vocab_size == 16000
    assert config.train.max_steps == 8000 and config.train.lr_schedule == "budget" and config.train.max_time == ""
    assert config.run_dir == "runs/multi30k_xx_en"


def test_frozen_recipe_is_the_e6cecd9_de_en_config(monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    frozen = load_config(REPO / "configs" / "frozen" / "multi30k_de_en_e6cecd9.yaml")
    assert (frozen.model.dropout, frozen.train.max_time, frozen.train.lr_schedule, frozen.train.subword_alpha) == (
        0.1, "90m", "budget", 0.0)
    assert Path(frozen.data.train.src) == (REPO.parent / "shared" / "data" / "multi30k" / "train.de").resolve()


SHIPPED = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads_validates_and_round_trips(name, tmp_path, monkeypatch):
    """No file is read but the YAML: the data root points at an empty folder."""
    root = tmp_path / "data"
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    config = load_config(REPO / "configs" / name)
    data = config.data
    corpora = [*(data.train if isinstance(data.train, list) else [data.train]), data.valid]
    corpora += [data.test] if data.test is not None else []
    for corpus in corpora:  # every file is found under the data root, none beside the config
        assert corpus.src.startswith(f"{root}/") and corpus.tgt.startswith(f"{root}/"), corpus
    save_config(config, tmp_path / "run" / "config.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())) == config
