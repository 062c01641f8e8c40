"""How a token reads wherever actdict shows one (``harvest.tokentext``), for each tokenizer family: GPT-2's
byte-level BPE (Pythia's too), SentencePiece with byte fallback (Llama-2 and Gemma style, a tiny one built
offline by ``tiny_models.sentencepiece_tokenizer``) and WordPiece (MiniLM)."""

import pytest
from tiny_models import sentencepiece_tokenizer

from actdict.harvest.random_init import gpt2_tokenizer
from actdict.harvest.tokens import token_decoder
from actdict.harvest.tokentext import shown_bytes


def decoder_of(tok, tmp_path):
    """``token_decoder`` of a store whose manifest names ``tok`` saved in a folder, and ``tok``'s encode."""
    tok.save_pretrained(tmp_path)
    return token_decoder({"tokenizer": str(tmp_path)}), lambda text: tok(text, add_special_tokens=False)[
        "input_ids"]


def test_bytes_that_are_no_character_alone_are_shown_as_bytes():
    assert shown_bytes("猫".encode()) == "猫"
    assert shown_bytes(b" \xe7") == " <0xE7>" and shown_bytes(b"\x8c") == "<0x8C>"
    assert shown_bytes(b"\xc3\xa9\xe2") == "é<0xE2>" and shown_bytes(b"\n") == "\n"


def test_gpt2_partial_characters_show_their_bytes_not_a_replacement_character(tmp_path):
    """'猫' is three GPT-2 tokens: each decoded alone to '�', so that the three looked alike."""
    decode, encode = decoder_of(gpt2_tokenizer(), tmp_path)
    ids = encode("héllo 🙂 猫\n")
    assert ids == [71, 2634, 18798, 32485, 13328, 234, 104, 198]
    assert decode(ids) == ["h", "é", "llo", " 🙂", " <0xE7>", "<0x8C>", "<0xAB>", "\n"]
    assert decode(encode("\tx\r a\u200bb   <|endoftext|>")) == [
        "\t", "x", "\r", " a", "\u200b", "b", " ", " ", " ", "<|endoftext|>"]


@pytest.mark.parametrize("llama", [True, False])
def test_sentencepiece_byte_fallback_tokens_show_their_bytes(tmp_path, llama):
    """A character outside the vocabulary is spelled in byte tokens; those of a multi-byte character
    decoded alone to '�' each."""
    decode, encode = decoder_of(sentencepiece_tokenizer(llama), tmp_path)
    ids = encode("a\u200bb\n猫")[-8:]  # Llama's begins with '▁a', Gemma's with 'a'
    assert ids == [229, 131, 142, 101, 13, 234, 143, 174]
    assert decode(ids) == ["<0xE2>", "<0x80>", "<0x8B>", "b", "\n", "<0xE7>", "<0x8C>", "<0xAB>"]
    assert decode([0, 1, 2]) == ["<unk>", "<s>", "</s>"]


def test_wordpiece_tokens_are_decoded_as_before():
    decode = token_decoder({"tokenizer": "all-MiniLM-L6-v2"})
    assert decode([7592, 2088, 2135, 100, 101, -1]) == ["hello", "world", "##ly", "[UNK]", "[CLS]", ""]


@pytest.mark.parametrize("llama", [True, False])
def test_sentencepiece_word_starts_keep_their_space(tmp_path, llama):
    """Llama-2's decoder strips a text's first space, so each '▁word' token decoded alone lost its space
    ('the', 'cat', 'sat': contexts read 'thecatsat') and a lone '▁' (before a byte-spelled character, in a
    run of spaces) read ''. Gemma's decoder keeps it: the same strings either way."""
    decode, encode = decoder_of(sentencepiece_tokenizer(llama), tmp_path)
    ids = encode("the cat sat x   y")
    first = " the" if llama else "the"  # Llama's tokenizer puts '▁' before a text, Gemma's does not
    assert decode(ids) == [first, " cat", " sat", " ", "x", " ", " ", " ", "y"]
    assert "".join(decode(ids)) == (" " if llama else "") + "the cat sat x   y"


def test_invisible_characters_are_shown_alike_in_the_report_the_terminal_and_the_lens():
    """A tab, a carriage return, a zero-width space, an NBSP: the report showed nothing for them (a CR
    even broke the context's line), `actdict feature` a tab as a tab and a CR as '\\x0d', the lens's labels
    a CR as a newline (↵). Each surface now shows them as ``toptokens.visible`` does, a token of spaces
    alone (highlighted, listed, a label) as ␣."""
    from actdict.analyze.lens import format_lens, token_label
    from actdict.analyze.report_sections import _snippet
    from actdict.analyze.show import context

    tokens = {"1": "x", "2": "\t", "3": "\r", "4": "\u200b", "5": " a\xa0b", "6": " y", "7": "  "}
    data = {"tokens": tokens, "wordpiece": False}
    assert context(data, [1.0, 9, 0, 3, [1, 2, 3, 4, 5, 6], 3]) == \
        "x\u21e5\u240d«<U+200B>» a<U+00A0>b y  (doc 0, pos 3)"
    assert context(data, [1.0, 9, 0, 1, [1, 7, 6], 1]) == "x«\u2423\u2423» y  (doc 0, pos 1)"
    hit = {"act": 1.0, "doc": 0, "pos": 3, "token": "\u200b", "before": ["x", "\t", "\r"],
           "after": [" a\xa0b", " y"]}
    assert ('<span class="dim">x\u21e5\u240d</span><span class="hl">&lt;U+200B&gt;</span>'
            '<span class="dim"> a&lt;U+00A0&gt;b y</span>') in _snippet(hit)
    assert [token_label(tokens[i]) for i in "1234567"] == [
        "x", "\u21e5", "\u240d", "<U+200B>", "a<U+00A0>b", "y", "\u2423\u2423"]
    res = {"model": "m", "hook": "h", "tokens": ["\t", "\r", "  ", " y"], "dicts": {"d": {
        "variant": "v", "k": 2, "labels_note": "", "active": [0] * 4, "features": [[]] * 4}}}
    assert [line[2:6] for line in format_lens(res).splitlines()[-4:]] == [
        "'\u21e5' ", "'\u240d' ", "'\u2423\u2423'", "' y'"]


def test_a_character_split_over_tokens_reads_as_itself_in_a_context():
    """GPT-2's '猫' is three tokens, each shown by its bytes (' <0xE7>', '<0x8C>', '<0xAB>'): a context
    holding all three read ' <0xE7><0x8C><0xAB> cat'; it reads ' 猫 cat', in the report and in the terminal.
    A character cut by the highlighted token or the context's edge keeps its marks."""
    from actdict.analyze.report_sections import _snippet
    from actdict.analyze.show import context

    tokens = {"1": " <0xE7>", "2": "<0x8C>", "3": "<0xAB>", "4": " cat", "5": "<0xE2>", "6": "<0x80>",
              "7": "<0x8B>", "8": "<0xF0>"}
    data = {"tokens": tokens, "wordpiece": False}
    assert context(data, [1.0, 9, 0, 3, [1, 2, 3, 4], 3]) == " 猫 «cat»  (doc 0, pos 3)"
    assert context(data, [1.0, 9, 0, 1, [1, 2, 3, 4], 1]) == " <0xE7>«<0x8C>»<0xAB> cat  (doc 0, pos 1)"
    assert context(data, [1.0, 9, 0, 1, [4, 5, 6, 7, 8, 4], 0]) == " «cat»<U+200B><0xF0> cat  (doc 0, pos 1)"
    hit = {"act": 1.0, "doc": 0, "pos": 3, "token": " cat", "before": [" <0xE7>", "<0x8C>", "<0xAB>"],
           "after": ["<0x8C>", "<0xAB>", " cat"]}
    assert ('<span class="dim"> 猫 </span><span class="hl">cat</span>'
            '<span class="dim">&lt;0x8C&gt;&lt;0xAB&gt; cat</span>') in _snippet(hit)


def test_a_documents_own_byte_marks_read_as_written():
    """A document's own '<0x0A>' or '<0xC3><0xA9>' (a text about Llama's byte tokens), spelled over several
    tokens, read as the newline (↵) and the 'é' it names in the report and the terminal: only a mark that
    one token's text holds whole, and only of a byte 0x80-0xFF (harvest.tokentext writes no other), is a
    byte; a character split over tokens still reads as itself."""
    from actdict.analyze.toptokens import context_text

    assert context_text(["the token ", "<", "0x", "0A", "> is"]) == "the token <0x0A> is"
    assert context_text([" <", "0xC3", "><", "0xA9", ">"]) == " <0xC3><0xA9>"
    assert context_text(["<0x41>"]) == "<0x41>"
    assert context_text([" <0xE7>", "<0x8C>", "<0xAB>", " cat"]) == " 猫 cat"
    assert context_text(["a<0xC3>", "<0xA9>b<0xC3>"]) == "aéb<0xC3>"
