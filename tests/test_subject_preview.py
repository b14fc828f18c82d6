"""The subject's preview samples its first caption, so nano's shows a prompt in nano's words."""

from types import SimpleNamespace

import torch

from vidbooth.config.subject import SubjectConfig
from vidbooth.engine import subject


def _preview_prompt(monkeypatch, tmp_path, captions, prompt=""):
    import vidbooth.data.video
    import vidbooth.engine.sampling

    seen = []

    def fake_sample(backbone, text, **kwargs):
        seen.append(text)
        return torch.zeros(1, 8, 4, 4, 3)

    monkeypatch.setattr(vidbooth.engine.sampling, "sample_video", fake_sample)
    monkeypatch.setattr(vidbooth.data.video, "save_contact_sheet", lambda frames, path: None)
    cfg = SubjectConfig()
    cfg.data.captions = captions
    cfg.preview.prompt = prompt
    run = SimpleNamespace(cfg=cfg, backbone=None, token="S*", class_noun="cross", num_vectors=1)
    run.captions = lambda: subject._Run.captions(run)
    subject._render_preview(run, tmp_path / "preview.png")
    return seen[0]


def test_preview_is_the_first_caption(monkeypatch, tmp_path):
    assert _preview_prompt(monkeypatch, tmp_path, ["a {} standing still"]) == "a S* cross standing still"


def test_default_captions_keep_a_photo_of(monkeypatch, tmp_path):
    assert _preview_prompt(monkeypatch, tmp_path, list(SubjectConfig().data.captions)) == "a photo of S* cross"


def test_preview_prompt_wins(monkeypatch, tmp_path):
    assert _preview_prompt(monkeypatch, tmp_path, ["a {} standing still"], "a S* cross moving left") == \
        "a S* cross moving left"


def test_a_preview_prompt_without_the_pseudo_word_gets_it_with_a_warning(monkeypatch, tmp_path, capsys):
    """As generate inserts it: the preview, of a plain cross, had not shown the subject, and nothing said so."""
    assert _preview_prompt(monkeypatch, tmp_path, ["a {} standing still"], "a cross moving left") == \
        "a S* cross moving left"
    assert "preview.prompt lacks the subject token 'S*'" in capsys.readouterr().err
