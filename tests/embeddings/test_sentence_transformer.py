"""The sentence-transformers backend with the real packaged model (loaded once per session)."""

from __future__ import annotations

import numpy as np

from embeddings import Embedder, SentenceTransformerEmbedder

_: Embedder = SentenceTransformerEmbedder.__new__(SentenceTransformerEmbedder)

QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "python: reverse a list"
UNRELATED = "What is the boiling point of water at sea level?"


def test_satisfies_the_embedder_protocol(real_embedder: Embedder) -> None:
    assert isinstance(real_embedder, SentenceTransformerEmbedder)
    assert isinstance(real_embedder, Embedder)
    assert real_embedder.dimension == 384
    assert real_embedder.name == "packaged:all-MiniLM-L6-v2"


def test_vectors_are_unit_length_float32_of_the_model_dimension(real_embedder: Embedder) -> None:
    texts = [QUESTION, PARAPHRASE, UNRELATED, "x"]

    embedded = real_embedder.embed(texts)

    assert len(embedded) == len(texts)
    for item in embedded:
        assert item.vector.dtype == np.float32
        assert item.vector.shape == (real_embedder.dimension,)
        assert np.isfinite(item.vector).all()
        assert abs(float(np.linalg.norm(item.vector)) - 1.0) < 1e-4


def test_paraphrases_are_closer_than_unrelated_texts(real_embedder: Embedder) -> None:
    question, paraphrase, unrelated = (item.vector for item in real_embedder.embed([QUESTION, PARAPHRASE, UNRELATED]))

    paraphrase_similarity = float(question @ paraphrase)
    unrelated_similarity = float(question @ unrelated)

    assert paraphrase_similarity > 0.8
    assert paraphrase_similarity > unrelated_similarity + 0.3


def test_batch_results_match_single_embeddings(real_embedder: Embedder) -> None:
    batch = real_embedder.embed([QUESTION, UNRELATED])
    single = real_embedder.embed([UNRELATED])

    assert float(batch[1].vector @ single[0].vector) > 0.999


def test_only_a_text_longer_than_the_model_window_is_truncated(real_embedder: Embedder) -> None:
    assert isinstance(real_embedder, SentenceTransformerEmbedder)
    assert real_embedder.window_tokens == 256
    short = "a short question about lists"
    # Each "word" is one word piece: 100 fit in the window, 400 do not.
    fits = " ".join(["word"] * 100)
    too_long = " ".join(["word"] * 400)

    embedded = real_embedder.embed([short, fits, too_long])

    assert [item.truncated for item in embedded] == [False, False, True]
    assert abs(float(np.linalg.norm(embedded[2].vector)) - 1.0) < 1e-4


def test_truncated_text_embeds_like_its_beginning(real_embedder: Embedder) -> None:
    """Two prompts that differ only after the window look identical: why truncated ones skip semantic hits."""
    head = " ".join(["word"] * 300)

    first, second = real_embedder.embed([f"{head} apples", f"{head} the French revolution"])

    assert first.truncated and second.truncated
    assert float(first.vector @ second.vector) > 0.999


def test_truncation_boundary_counts_the_special_tokens(real_embedder: Embedder) -> None:
    # [CLS] + n word pieces + [SEP]: 254 words fill the 256-token window exactly, 255 overflow it.
    exactly_full, one_over = real_embedder.embed([" ".join(["word"] * 254), " ".join(["word"] * 255)])

    assert not exactly_full.truncated
    assert one_over.truncated
