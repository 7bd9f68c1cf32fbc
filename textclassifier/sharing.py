"""
Share trained folders on the Hugging Face Hub: upload one as it is, and download one by its Hub id wherever
--adapter takes a folder. It moves files; it never writes them (the model card is written before a push).

    python train.py --mode adapter --push-to-hub your-name/depression-pfeiffer
    python predict.py --adapter your-name/depression-pfeiffer "some text"         # or your-name/name@revision

    >>> is_hub_id("your-name/depression-pfeiffer"), is_hub_id("adapters/depression-pfeiffer")  # where train.py saves
    (True, False)
    >>> split_hub_id("your-name/depression-pfeiffer@v2")
    ('your-name/depression-pfeiffer', 'v2')

A push uploads the folder's own files (not the lock beside it, no hidden files, no subfolders) as one commit, and
the repository then holds exactly them. A Hub id is downloaded into the Hugging Face cache (pickle weights never
are) and then checked as a local folder is; a local folder of the same name wins. huggingface_hub is imported only
where the Hub is used: the ONNX path stays quick.
"""

import json
import re
from pathlib import Path

from errors import ModelError, first_line

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@\S+)?$")  # org/name, optionally @revision (a branch, tag, commit)
PICKLES = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]  # never loaded here, so never downloaded
LOGIN = "log in with `hf auth login` or set HF_TOKEN"
LOCAL_ONLY = ("adapters", "models")  # where train.py saves: adapters/x and models/x are always local paths


def looks_like_hub_id(name):
    """Whether `name` has the form of a Hub id (org/name[@revision]); whether the repository exists is not asked."""
    return bool(HUB_ID.match(str(name))) and not str(name).startswith((".", "/", "~"))


def could_be_hub_id(name):
    """The form of a Hub id, and not under adapters/ or models/ (where train.py saves)."""
    return looks_like_hub_id(name) and str(name).split("/")[0] not in LOCAL_ONLY


def is_hub_id(name):
    """Whether an --adapter value names a Hub repository: it could be a Hub id and is no local path (a path that
    exists, or one whose first part is a local folder)."""
    return could_be_hub_id(name) and not Path(name).exists() and not Path(str(name).split("/")[0]).is_dir()


def split_hub_id(name):
    """'org/name@rev' -> ('org/name', 'rev'); 'org/name' -> ('org/name', None)."""
    repo_id, _, revision = str(name).partition("@")
    return repo_id, revision or None


# --- pull ---------------------------------------------------------------------------------------------------------


def adapter_folder(name):
    """The local folder to load for an --adapter value, and a note on where it came from (None for a plain local
    folder). A local folder wins over a Hub id of the same name (the note says so where that Hub id is also in the
    cache); a Hub id is downloaded into the Hugging Face cache (or found there offline). ModelError, one line: not a
    folder and not a Hub id, offline and not cached, no such repository or revision, no safetensors weights."""
    if not is_hub_id(name):
        if could_be_hub_id(name) and Path(name).is_dir() and in_hub_cache(split_hub_id(name)[0]):
            return str(name), f"note: using the local folder {name}, not the Hub repository of that name"
        return str(name), None  # a missing folder is refused by whoever reads it, in its own words
    repo_id, revision = split_hub_id(name)
    folder = download(repo_id, revision)
    if not any(Path(folder).rglob("*.safetensors")):  # an AdapterFusion's are in its subfolders
        raise ModelError(
            f"{name} on the Hugging Face Hub holds no safetensors weights (pickle weights are never downloaded nor "
            f"loaded here, because loading them can run code); ask its owner for a safetensors copy"
        )
    return folder, f"note: {name} from the Hugging Face Hub (commit {Path(folder).name[:12]}), cached in {folder}"


def adapter_folders(names):
    """adapter_folder for each name -> (folders, notes): a command prints the notes once its folders loaded, so that
    a refusal stays one line. ModelError for the first that cannot be had."""
    pairs = [adapter_folder(name) for name in names]
    return [folder for folder, _ in pairs], [note for _, note in pairs if note]


def download(repo_id, revision=None):
    """The repository's snapshot folder in the Hugging Face cache (downloaded, or found there offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return snapshot_download(repo_id, revision=revision, ignore_patterns=PICKLES)
    except HFValidationError as e:
        raise ModelError(f"{name} is neither a folder nor a valid Hub id ({first_line(e)})") from None
    except GatedRepoError:
        raise ModelError(f"{repo_id} on the Hugging Face Hub is gated: accept its terms there and {LOGIN}") from None
    except RevisionNotFoundError:
        raise ModelError(f"{repo_id} on the Hugging Face Hub has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"{name} is not a folder here nor a repository on the Hugging Face Hub (a private one needs a token: "
            f"{LOGIN})"
        ) from None
    except LocalEntryNotFoundError:
        raise ModelError(
            f"{name} is not a folder here, and the Hugging Face Hub cannot be reached (offline, or HF_HUB_OFFLINE=1) "
            f"while the cache holds no copy of it; connect once to download it, or pass a local folder"
        ) from None
    except Exception as e:  # requests' and huggingface_hub's many kinds: a network or Hub failure
        raise ModelError(f"cannot download {name} from the Hugging Face Hub ({hub_failure(e)})") from None


def in_hub_cache(repo_id):
    """Whether the Hugging Face cache holds a copy of this model repository."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return (Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")).is_dir()


def folder_name(folder):
    """A folder's name; for a Hub snapshot (.../models--org--name/snapshots/<commit>) the repository's name."""
    path = Path(folder)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name


# --- push ---------------------------------------------------------------------------------------------------------


def check_push(repo_id, private=False):
    """Before any work, the flags --push-to-hub REPO_ID and --private: a valid repository id and a token (from
    HF_TOKEN or `hf auth login`), --private only with a push; ModelError if not. Nothing to check without them."""
    if private and not repo_id:
        raise ModelError("--private applies to --push-to-hub REPO_ID; pass both, or neither")
    if not repo_id:
        return
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if "@" in repo_id:
        raise ModelError(f"--push-to-hub {repo_id}: name the repository without @revision; a push goes to main")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ModelError(f"--push-to-hub {repo_id}: not a Hub repository id, e.g. your-name/depression-pfeiffer "
                         f"({first_line(e)})") from None  # fmt: skip
    if get_token() is None:
        raise ModelError(f"--push-to-hub needs a Hugging Face token with write access: {LOGIN}")


def files_to_push(folder):
    """The folder's own files, by their paths in it: regular files directly in it and, for an AdapterFusion, in the
    subfolders its training.json names (its adapters, the Fusion), without hidden files, locks and leftovers."""
    folder = Path(folder)
    places = [folder, *(folder / name for name in fusion_subfolders(folder))]
    return sorted(
        p.relative_to(folder).as_posix()
        for place in places
        for p in place.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith((".lock", ".pid", ".tmp"))
    )


def fusion_subfolders(folder):
    """The subfolders of an AdapterFusion folder (train.py --fusion): each fused adapter's and the Fusion's."""
    try:
        info = json.loads((Path(folder) / "training.json").read_text())
        return [*info["fusion"]["adapters"], info["fusion"]["name"]] if info.get("adapter_config") == "fusion" else []
    except (OSError, ValueError, KeyError, TypeError):
        return []


def push_folder(folder, repo_id, private=False, api=None):
    """Upload the folder's own files (files_to_push) to the model repository `repo_id` (created where missing,
    private where asked) as one commit, removing what the repository held beside them (its history keeps them);
    returns the repository's URL. The folder goes up as it is: whoever pushes writes its model card first (with
    the Hub id, model_card.write_card). ModelError, one line, on any Hub or network failure: the folder is kept."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    names = files_to_push(folder)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            allow_patterns=names,
            delete_patterns="*",
            commit_message=f"Upload {Path(folder).name} ({len(names)} files) with the project's push",
        )
    except Exception as e:  # HfHubHTTPError (401, 403, ...), a connection error, offline mode
        raise ModelError(
            f"could not push {folder} to {repo_id} on the Hugging Face Hub ({hub_failure(e)}); the folder is kept "
            f"as it is; push it again with python export.py --adapter {folder} --push-to-hub {repo_id}"
        ) from None
    return str(url)


def pushed_line(folder, repo_id, url):
    """What a command prints after a push."""
    return f'pushed {folder}/ to {url}; predict with: python predict.py --adapter {repo_id} "some text"'


def hub_failure(error):
    """What went wrong with a Hub call, in a few words: no network, or the Hub's own answer."""
    import requests
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(error, (requests.ConnectionError, requests.Timeout, OfflineModeIsEnabled)):
        return "the Hub cannot be reached: no network, or HF_HUB_OFFLINE=1"
    return f"{type(error).__name__}: {first_line(error)}"
