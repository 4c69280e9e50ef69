"""Text splitting for synthesis (a pure function, so tested directly)."""

from voxgate.text import split_for_synthesis


def test_sentences_and_a_short_first_piece() -> None:
    text = "Hello, how can I help you today? I am fine, thanks.\n\nNew paragraph."
    assert split_for_synthesis(text) == [
        "Hello,",
        "how can I help you today?",
        "I am fine, thanks.",
        "New paragraph.",
    ]


def test_first_piece_is_not_a_lone_short_word() -> None:
    assert split_for_synthesis("So, it begins.") == ["So, it begins."]


def test_long_runs_are_cut_at_clauses_then_spaces() -> None:
    clauses = split_for_synthesis("aaaa bbb, " * 100, max_chars=50)
    assert all(len(piece) <= 50 for piece in clauses)
    assert all(piece.endswith(",") for piece in clauses[1:-1])
    words = split_for_synthesis("word " * 200, max_chars=50)
    assert all(len(piece) <= 50 for piece in words)
    assert " ".join(words).split() == ["word"] * 200


def test_unbroken_text_is_hard_cut() -> None:
    pieces = split_for_synthesis("x" * 120, max_chars=50)
    assert pieces == ["x" * 50, "x" * 50, "x" * 20]


def test_cjk_sentences_split_without_spaces() -> None:
    # U+FF01 is the full-width exclamation mark.
    assert split_for_synthesis("你好。我很好\uff01") == ["你好。", "我很好\uff01"]


def test_nothing_to_say() -> None:
    assert split_for_synthesis("  \n ") == []
