"""View-dependent prompts, the BPE vocabulary builder, TextEmbedding and the analytic GaussianPrior."""

from __future__ import annotations

import json

import pytest
import torch

from dreamfield.diffusion import NoiseSchedule
from dreamfield.diffusion.analytic import GaussianData
from dreamfield.prior import GaussianPrior, TextEmbedding, view_label, view_prompt
from dreamfield.prior.tokenizer import BOS, EOS, build_bpe_vocab, byte_to_unicode, write_clip_tokenizer


# ------------------------------------------------------------------ view suffix (TOY_DOMAIN rule)
@pytest.mark.parametrize(
    "az, el, label",
    [
        (0.0, 0.0, "front"),
        (45.0, 0.0, "front"),
        (-45.0, 10.0, "front"),
        (45.01, 0.0, "side"),
        (-90.0, 0.0, "side"),
        (134.99, 0.0, "side"),
        (135.0, 0.0, "back"),
        (-135.0, 0.0, "back"),
        (180.0, 0.0, "back"),
        (-180.0, 0.0, "back"),
        (225.0, 0.0, "back"),  # wraps to -135
        (315.0, 0.0, "front"),  # wraps to -45
        (314.99, 0.0, "side"),  # wraps to -45.01
        (405.0, 0.0, "front"),  # wraps to 45
        (-270.0, 0.0, "side"),  # wraps to 90
        (0.0, 60.0, "front"),  # overhead needs elevation strictly above 60
        (0.0, 60.01, "overhead"),
        (180.0, 85.0, "overhead"),
    ],
)
def test_view_label_boundaries(az, el, label):
    assert view_label(az, el) == label


def test_view_prompt_appends_the_suffix():
    assert view_prompt("a red cube", 100.0, 20.0) == "a red cube, side view"
    assert view_prompt("a red cube", 10.0, 70.0) == "a red cube, overhead view"


# ------------------------------------------------------------------ BPE vocabulary
WORDS = ["a", "red", "green", "cube", "cone", "pyramid", "overhead", "view", "purple", "purple"]


def test_byte_to_unicode_is_a_bijection_onto_printable_characters():
    table = byte_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert all(not ch.isspace() and ch.isprintable() for ch in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == chr(256 + 32)  # space is the 33rd remapped byte


def test_build_bpe_vocab_layout_and_determinism():
    vocab, merges = build_bpe_vocab(WORDS)
    assert (vocab, merges) == build_bpe_vocab(list(reversed(WORDS)))  # order and duplicates don't matter
    ids = sorted(vocab.values())
    assert ids == list(range(len(vocab)))  # dense ids
    assert vocab[BOS] == len(vocab) - 2 and vocab[EOS] == len(vocab) - 1
    assert len(vocab) == 512 + len({a + b for a, b in merges}) + 2
    for w in set(WORDS):
        assert w + "</w>" in vocab
    with pytest.raises(ValueError, match="whitespace"):
        build_bpe_vocab(["two words"])


def test_clip_tokenizer_reads_the_files_and_keeps_each_word_whole(tmp_path):
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer(tmp_path / "tok", WORDS, model_max_length=12)
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 12
    assert (folder / "merges.txt").read_text().startswith("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    ids = tok("A purple  Pyramid, overhead view", padding="max_length", max_length=12).input_ids
    words = ["a", "purple", "pyramid"]
    expected = [vocab[BOS]] + [vocab[w + "</w>"] for w in words] + [vocab[",</w>"]]
    expected += [vocab["overhead</w>"], vocab["view</w>"], vocab[EOS]]
    assert ids == expected + [vocab[EOS]] * (12 - len(expected))
    # an unknown word still tokenizes into byte pieces, never the unknown token
    unknown = tok("zebra").input_ids
    assert len(unknown) > 3 and unknown[0] == vocab[BOS] and unknown.count(vocab[EOS]) == 1


# ------------------------------------------------------------------ TextEmbedding
def test_text_embedding_checks_and_concat():
    a = TextEmbedding(torch.zeros(1, 3, 2), torch.ones(1, 3, 2), ("x",))
    b = TextEmbedding(torch.full((2, 3, 2), 2.0), torch.ones(2, 3, 2), ("y", "z"))
    ab = TextEmbedding.concat(a.repeat(2), b)
    assert ab.prompts == ("x", "x", "y", "z") and ab.cond.shape == (4, 3, 2)
    assert torch.equal(ab.cond[2:], b.cond)
    with pytest.raises(ValueError, match="broadcast"):
        b.repeat(3)
    with pytest.raises(ValueError, match="do not agree"):
        TextEmbedding(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2), ("x",))
    with pytest.raises(ValueError, match="negative"):
        TextEmbedding.concat(a, TextEmbedding(a.cond, a.uncond, ("x",), negative="blurry"))


# ------------------------------------------------------------------ GaussianPrior
def test_gaussian_prior_eps_is_the_exact_gaussian_eps_per_prompt():
    s = NoiseSchedule()
    mus = {"p": torch.randn(3, 4, 4), "q": torch.randn(3, 4, 4)}
    prior = GaussianPrior(mus, 0.7, s)
    x = torch.randn(3, 3, 4, 4)
    t = torch.tensor([10, 500, 990])
    eps = prior.eps(x, t, prior.embed(["q", "p", "q"]), 7.5)  # no uncond_mu: guidance ignored
    for i, p in enumerate(["q", "p", "q"]):
        torch.testing.assert_close(eps[i : i + 1], GaussianData(mus[p], 0.7).eps(x[i : i + 1], t[i : i + 1], s))
    with pytest.raises(ValueError, match="no mean for prompt"):
        prior.embed(["r"])


def test_gaussian_prior_identity_encoder():
    prior = GaussianPrior(torch.zeros(3, 8, 8), 0.5)
    rgb = torch.rand(2, 3, 8, 8)
    assert torch.equal(prior.encode(rgb), rgb) and torch.equal(prior.decode(rgb), rgb)
    assert prior.encode(torch.rand(1, 3, 16, 16)).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="3 latent channels"):
        GaussianPrior(torch.zeros(4, 8, 8), 0.5).encode(rgb)
