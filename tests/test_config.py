"""Configs: JSON round trip, invalid combinations rejected with the fields named, --set overrides."""

from __future__ import annotations

import dataclasses
import json

import pytest

from seq2seq_jax.core import field_docs
from seq2seq_jax.core.config import ConfigError, DecodeConfig, ExperimentConfig, ModelConfig
from seq2seq_jax.core.presets import PRESETS


def test_json_round_trip(tmp_path):
    config = ExperimentConfig().with_overrides(["model.attention=general", "model.enc_layers=2", "decode.beam_size=4",
                                                "train.label_smoothing=0.1", "data.tokenizer=bpe"])
    config.save(tmp_path / "config.json")
    assert ExperimentConfig.load(tmp_path / "config.json") == config
    assert ModelConfig.from_json(config.model.to_json()) == config.model


@pytest.mark.parametrize(("fields", "message"), [
    (dict(attention="dot", enc_hidden_size=16, dec_hidden_size=20), "dot"),
    (dict(bridge="last", enc_layers=2, dec_layers=1), "enc_layers == dec_layers"),
    (dict(bridge="last", enc_hidden_size=16, dec_hidden_size=20), "bridge 'last'"),
    (dict(tie_output_embedding=True, readout_size=20, tgt_embed_size=16), "tie_output_embedding"),
    (dict(attention="luong"), "model.attention"),
    (dict(rnn_dropout=1.0), "rnn_dropout"),
    (dict(copy_attention=True, src_vocab_size=40, tgt_vocab_size=41), "joint"),
    (dict(tie_src_tgt_embedding=True, src_embed_size=16, tgt_embed_size=32), "src_embed_size == tgt_embed_size"),
    (dict(tie_src_tgt_embedding=True, src_vocab_size=40, tgt_vocab_size=41), "data.joint_vocab"),
    (dict(coverage_attention=True, attention="general"), "coverage_attention .* needs attention 'additive'"),
])
def test_invalid_model_combinations(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**fields)


def test_copy_attention_needs_a_joint_vocabulary():
    with pytest.raises(ConfigError, match="data.joint_vocab"):
        ExperimentConfig().with_overrides(["model.copy_attention=true"])
    config = ExperimentConfig().with_overrides(["model.copy_attention=true", "data.joint_vocab=true"])
    assert config.model.copy_attention and ModelConfig(copy_attention=True, src_vocab_size=40, tgt_vocab_size=40)


def test_coverage_loss_needs_coverage_attention():
    with pytest.raises(ConfigError, match="train.coverage_loss_weight needs model.coverage_attention=true"):
        ExperimentConfig().with_overrides(["train.coverage_loss_weight=1.0"])
    with pytest.raises(ConfigError, match="train.coverage_loss_weight must be >= 0"):
        ExperimentConfig().with_overrides(["model.coverage_attention=true", "train.coverage_loss_weight=-1"])
    config = ExperimentConfig().with_overrides(["model.coverage_attention=true", "train.coverage_loss_weight=1.0"])
    assert config.model.coverage_attention and config.train.coverage_loss_weight == 1.0


def test_shared_source_target_embedding_needs_a_joint_vocabulary():
    with pytest.raises(ConfigError, match="model.tie_src_tgt_embedding needs data.joint_vocab=true"):
        ExperimentConfig().with_overrides(["model.tie_src_tgt_embedding=true"])
    config = ExperimentConfig().with_overrides(["model.tie_src_tgt_embedding=true", "model.tie_output_embedding=true",
                                                "model.readout_size=32", "data.joint_vocab=true"])
    assert config.model.tie_src_tgt_embedding and config.model.tie_output_embedding
    assert config.with_vocab_sizes(40, 40).model.src_vocab_size == 40
    with pytest.raises(ConfigError, match="src_vocab_size=40, tgt_vocab_size=41"):
        config.with_vocab_sizes(40, 41)  # the sizes the tokenizers give, checked before a model is built


def test_overrides_parse_types_and_apply_together():
    config = ExperimentConfig().with_overrides(["model.bidirectional=false", "train.learning_rate=0.5",
                                                "data.train_src=a.txt", "data.train_tgt=b.txt",
                                                "data.tokenizer=unigram", "data.user_symbols=#A#,#B#"])
    assert config.model.bidirectional is False and config.train.learning_rate == 0.5
    assert config.data.uses_files and config.data.user_symbols == ("#A#", "#B#")
    assert ExperimentConfig.from_json(config.to_json()) == config
    for bad, message in [("model.enc_layers=two", "expected int"), ("model.nope=1", "unknown field"),
                         ("modle.enc_layers=1", "unknown section"), ("enc_layers", "SECTION.KEY=VALUE")]:
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig().with_overrides([bad])


def test_bad_config_file_names_file_and_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "model": {\n    "enc_layers": 2,\n  }\n}\n')
    with pytest.raises(ConfigError, match=r"config.json:4"):
        ExperimentConfig.load(path)
    path.write_text(json.dumps({"model": {"hidden": 3}}))
    with pytest.raises(ConfigError, match="hidden"):
        ExperimentConfig.load(path)


def test_decode_max_len():
    assert DecodeConfig(max_len_a=1.5, max_len_b=10).max_len(4) == 16
    with pytest.raises(ConfigError, match="n_best"):
        DecodeConfig(beam_size=2, n_best=3)


def test_every_field_has_a_one_line_meaning():
    docs = field_docs.describe_fields()
    assert len(docs) == sum(len(dataclasses.fields(type(section))) for section in vars(ExperimentConfig()).values())
    for doc in docs:
        assert doc.help and "\n" not in doc.help and len(doc.help) <= 110, doc.key
    assert field_docs.field_help("decode", "batch_size").startswith("sentences per search")


def test_an_unknown_setting_says_what_was_meant():
    for bad, meant in [("model.enc_layer=2", "model.enc_layers"), ("decode.beam=5", "decode.beam_size"),
                       ("decode.beem=5", "decode.beam_size"), ("decode.label_smoothing=0.1", "train.label_smoothing"),
                       ("modle.enc_layers=1", "model")]:
        with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
            ExperimentConfig().with_overrides([bad])
    with pytest.raises(ConfigError, match="did you mean 'beam_size'"):
        ExperimentConfig.from_dict({"decode": {"beam_sise": 5}})


def test_presets_are_valid_and_lowest_in_precedence(tmp_path):
    for name, sections in PRESETS.items():
        config = ExperimentConfig.from_preset(name)
        for section, fields in sections.items():  # every field a preset names is what it resolves to
            assert {key: getattr(getattr(config, section), key) for key in fields} == fields, name
    translation = ExperimentConfig.from_preset("translation")
    assert translation.model.enc_layers == 2 and translation.model.decoder_style == "luong"
    assert translation.decode.beam_size == 5 and translation.train.label_smoothing == 0.1
    summarization = ExperimentConfig.from_preset("summarization")
    assert summarization.model.copy_attention and summarization.decode.no_repeat_ngram_size == 3
    # preset < config file < --set; a file may name its preset itself
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {"enc_layers": 3}, "decode": {"beam_size": 4}}))
    config = ExperimentConfig.load(path, preset="translation").with_overrides(["decode.beam_size=2"])
    assert (config.model.enc_layers, config.decode.beam_size, config.model.decoder_style) == (3, 2, "luong")
    path.write_text(json.dumps({"preset": "translation", "model": {"enc_layers": 3}}))
    assert ExperimentConfig.load(path) == dataclasses.replace(
        translation, model=dataclasses.replace(translation.model, enc_layers=3))
    assert ExperimentConfig.load(path, preset="translation") == ExperimentConfig.load(path)
    with pytest.raises(ConfigError, match="names preset 'translation'"):
        ExperimentConfig.load(path, preset="small")
    with pytest.raises(ConfigError, match="did you mean 'summarization'"):
        ExperimentConfig.from_preset("sumarization")
