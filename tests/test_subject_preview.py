"""The subject's preview samples its first caption, so nano's shows a prompt in nano's words."""

from types import SimpleNamespace

import pytest
import torch

from vidbooth.config.subject import SubjectConfig
from vidbooth.engine import subject
from vidbooth.errors import UserError


def _preview_prompt(monkeypatch, tmp_path, captions, prompt=""):
    """The prompt the preview samples; it checks that the preview is drawn at the training size."""
    import vidbooth.data.video
    import vidbooth.engine.sampling

    seen, sizes = [], []

    def fake_sample(backbone, text, **kwargs):
        seen.append(text)
        sizes.append((kwargs["height"], kwargs["width"]))
        return torch.zeros(1, 8, 4, 4, 3)

    monkeypatch.setattr(vidbooth.engine.sampling, "sample_video", fake_sample)
    monkeypatch.setattr(vidbooth.data.video, "save_contact_sheet", lambda frames, path: None)
    cfg = SubjectConfig()
    cfg.data.captions = captions
    cfg.preview.prompt = prompt
    run = SimpleNamespace(cfg=cfg, backbone=None, token="S*", class_noun="cross", num_vectors=1, size=48)
    run.captions = lambda: subject._Run.captions(run)
    run.preview_prompt = subject._preview_prompt(run)
    subject._render_preview(run, tmp_path / "preview.png")
    assert sizes == [(48, 48)]  # the training size (data.resolution), not the model's own
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


def _train_until_the_model_loads(monkeypatch, tmp_path, prompt: str, num_vectors: int = 1) -> None:
    """train_subject with `preview.prompt` = `prompt`, stopped (UserError 'model loads') where the model would load."""
    from tests.badinputs import write_photo
    from vidbooth.config import BackboneConfig
    from vidbooth.config.subject import TextualInversionConfig

    def model_loads(*args, **kwargs):
        raise UserError("model loads")

    monkeypatch.setattr(subject, "load_backbone_for", model_loads)
    write_photo(tmp_path / "photos" / "p0.png")
    cfg = SubjectConfig(backbone=BackboneConfig(base="tiny"), name="S*", photos=str(tmp_path / "photos"),
                        class_noun="cross", textual_inversion=TextualInversionConfig(num_vectors=num_vectors))
    cfg.preview.prompt = prompt
    subject.train_subject(cfg)


def test_the_preview_prompts_warning_comes_before_training(monkeypatch, tmp_path, capsys):
    """It had come after the minutes of training, when nothing could be done about it but train again."""
    with pytest.raises(UserError, match="^model loads$"):
        _train_until_the_model_loads(monkeypatch, tmp_path, "a cross moving left")
    assert "preview.prompt lacks the subject token 'S*'" in capsys.readouterr().err


def test_a_part_of_the_pseudo_word_in_the_preview_prompt_is_refused_before_training(monkeypatch, tmp_path, capsys):
    with pytest.raises(UserError, match=r"^'S\*_1' is a part of subject S\*'s pseudo-word of 2 vectors"):
        _train_until_the_model_loads(monkeypatch, tmp_path, "a S*_1 cross moving left", num_vectors=2)
    assert "lacks the subject token" not in capsys.readouterr().err  # the error alone, not a warning to insert it


def _prompt_to_preview(prompt: str, enabled: bool = True, num_vectors: int = 1) -> str | None:
    cfg = SubjectConfig()
    cfg.preview.prompt, cfg.preview.enabled = prompt, enabled
    return subject._preview_prompt(SimpleNamespace(cfg=cfg, token="S*", class_noun="cross", num_vectors=num_vectors))


def test_a_pseudo_word_put_in_the_preview_prompt_is_written_out_in_its_vectors():
    assert _prompt_to_preview("a cross moving left", num_vectors=2) == "a S* S*_1 cross moving left"


def test_a_preview_prompt_is_not_read_without_a_preview(capsys):
    """Nothing is sampled from it: its warning would be of nothing."""
    assert _prompt_to_preview("a cross moving left", enabled=False) is None
    assert "lacks the subject token" not in capsys.readouterr().err
