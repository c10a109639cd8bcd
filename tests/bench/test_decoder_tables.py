"""The decoder section of BENCHMARKS.md: the stories split in two halves, and the table it renders."""

from __future__ import annotations

from bench.decoder_tables import SEPARATOR, decoder_markdown, halves


def test_stories_split_into_halves_by_their_separator(tmp_path):
    stories = tmp_path / "stories.txt"
    stories.write_text(f"\n{SEPARATOR}\n".join(f"story {i}" for i in range(5)) + f"\n{SEPARATOR}\n")
    first, second = halves(stories, tmp_path)
    assert [p.strip() for p in first.read_text().split(SEPARATOR)] == ["story 0", "story 1"]
    assert [p.strip() for p in second.read_text().split(SEPARATOR)] == ["story 2", "story 3", "story 4"]


def test_the_table_gives_each_row_against_the_original():
    rows = [
        {"method": "original", "keep": 1.0, "recovery": "-", "perplexity": 4.0, "wikitext": 100.0},
        {"method": "mi", "keep": 0.8, "recovery": "on", "kept": 0.801, "perplexity": 6.0, "wikitext": 150.0},
        {"method": "random", "keep": 0.8, "recovery": "off", "kept": 0.8, "perplexity": 10.0},
    ]
    lines = decoder_markdown(rows)
    assert "| 0.8 | mi | on | 0.801 | 6.0 | 1.50x | 150.0 |" in lines
    assert "| 0.8 | random | off | 0.800 | 10.0 | 2.50x | - |" in lines
