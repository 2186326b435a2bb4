"""Hub names (`org/name[@revision]`) for grow.donor, train.init_from and data.tokenizer
(pipeline/hub.py): downloaded through huggingface_hub when online (here a stand-in for the download),
a local path always first, and offline one clear error before any work."""

import shutil

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from pipeline.config import ConfigError, load_config
from pipeline.models.hf import hf_config
from pipeline.models.sizes import SIZES


@pytest.fixture
def hub_repo(tmp_path):
    """A Qwen2 donor with its tokenizer files, as a Hub repo would hold them."""
    from transformers import AutoModelForCausalLM
    repo = tmp_path / "repo"
    AutoModelForCausalLM.from_config(hf_config(SIZES["qwen2-nano"], 300, {})).save_pretrained(repo)
    (repo / "tokenizer_config.json").write_text("{}")
    return repo


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, hub_repo):
    """snapshot_download stand-in: 'downloads' hub_repo into a cache dir per (repo, revision)."""
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        calls.append((repo_id, revision, local_files_only))
        target = tmp_path / "cache" / repo_id.replace("/", "--") / (revision or "main")
        if not target.exists():
            shutil.copytree(hub_repo, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    return calls


def test_a_hub_donor_is_downloaded_and_read_like_a_local_dir(fake_hub, tmp_path):
    config = load_config("tiny", ["grow.donor=SomeOrg/qwen-donor@v1.0", "model.size=null", "model.layers=3"])
    assert fake_hub == [("SomeOrg/qwen-donor", "v1.0", False)]
    assert config.grow.donor == str(tmp_path / "cache" / "SomeOrg--qwen-donor" / "v1.0")
    assert config.model.size == "qwen2-nano" and config.model.layers == 3 and config.model.hidden == 128
    config = load_config("tiny", ["train.init_from=SomeOrg/qwen-donor", "data.tokenizer=SomeOrg/qwen-donor",
                                  "model.size=null"])
    assert config.train.init_from == config.data.tokenizer == str(tmp_path / "cache" / "SomeOrg--qwen-donor" / "main")


def test_a_local_path_wins_over_a_hub_name(fake_hub, tmp_path, hub_repo):
    shutil.copytree(hub_repo, tmp_path / "SomeOrg" / "qwen-donor")
    config = load_config("tiny", ["grow.donor=SomeOrg/qwen-donor", "model.size=null"])
    assert config.grow.donor == "SomeOrg/qwen-donor" and fake_hub == []
    # a new name inside an existing local dir is a path too (a tokenizer may be trained there)
    assert load_config("tiny", ["data.tokenizer=SomeOrg/new-tokenizer"]).data.tokenizer == "SomeOrg/new-tokenizer"


def test_a_hub_tokenizer_repo_without_a_tokenizer_is_refused(fake_hub, hub_repo):
    (hub_repo / "tokenizer_config.json").unlink()
    with pytest.raises(ConfigError, match="has no tokenizer_config.json"):
        load_config("tiny", ["data.tokenizer=SomeOrg/not-a-tokenizer"])


def test_no_network_is_one_clear_error(fake_hub, monkeypatch):
    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("connection error")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ConfigError, match="not in the local HF cache and the Hub cannot be reached.*pass a local dir"):
        load_config("tiny", ["grow.donor=SomeOrg/qwen-donor"])


@pytest.mark.parametrize("key", ["grow.donor", "train.init_from", "data.tokenizer"])
def test_offline_a_hub_name_is_refused_before_any_work(key, tmp_path, monkeypatch):
    """The real snapshot_download under HF_HUB_OFFLINE=1 with nothing cached: no download, no tokenizer
    trained, nothing written; the error names the fix."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"{key}='SomeOrg/some-model-135M' is a Hub name .* HF_HUB_OFFLINE is set: "
                                          f"download it where there is network"):
        load_config("tiny", [f"{key}=SomeOrg/some-model-135M", f"data.output_dir={tmp_path}/out"])
    assert list(tmp_path.iterdir()) == []
