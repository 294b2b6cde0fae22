"""Configs mean what the command line says: every experiment x method x base composes and builds
exactly that method over exactly that base, an experiment's per-method values reach only that
method, bad values fail in one line, the configs ship in the package, and every command the
README shows runs."""

import copy
import json
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from toys import ROOT, readme_example, train_cli

from tensam.models import ResNet
from tensam.optim import DAS, NBAR, OBAR, SAM, NuSAM, build_optimizer
from tensam.tasks import build_model, build_task
from tensam.train import CONFIG_DIR

CONFIGS = Path(CONFIG_DIR)
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONFIGS / "optimizer").glob("*.yaml"))
BASES = sorted(p.stem for p in (CONFIGS / "optimizer" / "base").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (CONFIGS / "hparams_search").glob("*.yaml"))
#: method config -> the class it must build (plain configs build the base optimizer itself)
CLASSES = {"sam": SAM, "asam": SAM, "das": DAS, "nbar": NBAR, "obar": OBAR, "nusam": NuSAM}
TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
PLAIN = ("sgd", "adam", "adamw")


def _compose(overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra)


def _resolved(cfg, keys=("task", "model", "optimizer")):
    """The sections a run builds, resolved (the logger's ${hydra:...} needs a running app)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}


#: data sets that are large: the model gets their inputs from a stub (the tasks themselves are
#: tested in tests/test_cifar.py and tests/test_imagefolder.py)
STUB_INPUTS = {"tensam.data.CIFAR10": {"input_shape": (3, 32, 32), "num_classes": 10},
               "tensam.data.ImageFolder": {"input_shape": (3, 224, 224), "num_classes": 1000}}
#: experiments whose model needs what a test machine lacks: the overrides that build it here
#: (torchvision's ImageNet weights: random ones instead; the trained dense network: a random one)
#: (hub language models: the same architecture family, small, random, with MiniLM's tokenizer)
OFFLINE = {"table3": ["model.pretrained=false"],
           "table3_cpu": ["model.checkpoint=${oc.env:TEST_DENSE_RESNET20}"],
           "table4": ["model.pretrained=null", "task.tokenizer=minilm",
                      "+model.config={model_type: roberta, vocab_size: 30522, hidden_size: 32, "
                      "num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}"],
           "table5": ["model.pretrained=null", "task.tokenizer=minilm",
                      "+model.config={model_type: opt, vocab_size: 30522, hidden_size: 384, "
                      "word_embed_proj_dim: 384, num_hidden_layers: 1, num_attention_heads: 6, "
                      "ffn_dim: 64}"]}


@pytest.fixture(autouse=True, scope="module")
def dense_resnet20(tmp_path_factory):
    """A dense ResNet-20's state_dict for model=resnet20_compressed, as $TEST_DENSE_RESNET20."""
    path = tmp_path_factory.mktemp("dense") / "resnet20.pt"
    torch.save(ResNet(20, "dense").state_dict(), path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_DENSE_RESNET20", str(path))
        yield path


#: models already built, by their task and model config: an experiment's model is built once
#: and copied for each optimizer (table3's TT-SVD of a ResNet-18 takes many seconds)
_MODELS: dict[str, torch.nn.Module] = {}


def _build(c):
    key = json.dumps([c["task"], c["model"]], sort_keys=True, default=str)
    if key not in _MODELS:
        target = c["task"].get("data", {}).get("_target_")
        task = (SimpleNamespace(model_inputs=lambda: STUB_INPUTS[target])
                if target in STUB_INPUTS else build_task(c["task"], c["model"].get("pretrained")))
        _MODELS[key] = build_model(c["model"], task)
    model = copy.deepcopy(_MODELS[key])
    return model, build_optimizer(c["optimizer"], model, total_steps=10)


def test_the_source_tree_configs_are_the_package_configs():
    assert CONFIGS.is_relative_to(Path(__import__("tensam").__file__).parent)
    assert (ROOT / "configs").resolve() == CONFIGS.resolve()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert ('tensam = ["configs/*.yaml", "configs/**/*.yaml", "reports/templates/*.md"]'
            in pyproject)  # the configs and the report templates ship in the wheel


@pytest.mark.parametrize("experiment", [*EXPERIMENTS, None])
@pytest.mark.parametrize("method", [m for m in OPTIMIZERS if m not in PLAIN])
@pytest.mark.parametrize("base", BASES)
def test_every_experiment_method_and_base_builds_exactly_that(experiment, method, base):
    overrides = [f"optimizer={method}", f"optimizer/base={base}", *OFFLINE.get(experiment, [])]
    c = _resolved(_compose(([f"experiment={experiment}"] if experiment else []) + overrides))
    assert c["optimizer"]["base"]["_target_"] == f"torch.optim.{TORCH[base].__name__}"
    try:
        model, opt = _build(c)
    except ValueError as err:  # BAR needs K = 2 groups, nuSAM matrices: they must say so
        assert ((method in ("nbar", "obar") and "K = 2" in str(err))
                or (method == "nusam" and "no parameter to perturb" in str(err))), err
        return
    inner = opt if method == "none" else opt.base
    assert type(inner) is TORCH[base]
    if method != "none":
        assert type(opt) is CLASSES[method]
    if method == "asam":
        assert opt.adaptive


@pytest.mark.parametrize("experiment", [*EXPERIMENTS, None])
@pytest.mark.parametrize("plain", PLAIN)
def test_plain_optimizers_train_themselves_under_any_experiment(experiment, plain):
    """``experiment=table1 optimizer=sgd`` trained AdamW once (the experiment's base won): a
    plain optimizer is that torch optimizer, whatever base the experiment gives its methods."""
    c = _resolved(_compose(([f"experiment={experiment}"] if experiment else [])
                           + [f"optimizer={plain}", *OFFLINE.get(experiment, [])]))
    _, opt = _build(c)
    assert type(opt) is TORCH[plain]


TUNED = CONFIGS / "tuned"


def _tuned(experiment: str, name: str) -> dict:
    """What configs/tuned/<experiment>/<name>.yaml sets (following its defaults list)."""
    path = TUNED / experiment / f"{name}.yaml"
    if not path.exists():
        return {}
    raw = OmegaConf.to_container(OmegaConf.load(path))
    out = {}
    for entry in raw.pop("defaults", []):  # "/tuned/<experiment>/<name>@_here_"
        out.update(_tuned(*entry.split("@")[0].strip("/").split("/")[1:]))
    return {**out, **raw}


def test_every_tuned_file_names_an_experiment_and_an_optimizer():
    """A tuned file for an experiment or optimizer that does not exist would never be read."""
    for path in TUNED.glob("*/*.yaml"):
        assert path.parent.name in EXPERIMENTS and path.stem in OPTIMIZERS, path


def _optimizer(*overrides):
    return _resolved(_compose(list(overrides)), ("optimizer",))["optimizer"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_an_experiments_values_reach_only_their_own_method(experiment):
    """table1 pins SAM rho 0.01 and DAS alpha 0.001; ASAM keeps its rho 0.5 and nBAR its alpha.
    Each optimizer reads only configs/tuned/<experiment>/<its name>.yaml, and a method's base
    the file of the base."""
    for method in ("sam", "asam", "nusam", "das", "nbar", "obar"):
        got = _optimizer(f"experiment={experiment}", f"optimizer={method}")
        own = _optimizer(f"optimizer={method}")
        got.pop("base"), own.pop("base")
        assert got == {**own, **_tuned(experiment, method)}, method
    if experiment == "table1":
        assert _optimizer("experiment=table1", "optimizer=sam")["rho"] == 0.01
        assert _optimizer("experiment=table1", "optimizer=asam")["rho"] == 0.5
    for base in BASES:  # fig1's SGD momentum 0 must not reach Adam
        want = {**_optimizer(f"optimizer={base}")["base"], **_tuned(experiment, base)}
        assert _optimizer(f"experiment={experiment}", f"optimizer={base}") == {"base": want}
        assert _optimizer(f"experiment={experiment}", f"optimizer/base={base}",
                          "optimizer=das")["base"] == want


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_its_hydra_node(experiment):
    cfg = _compose([f"experiment={experiment}"], hydra=True)
    assert cfg.name and (cfg.steps > 0 or cfg.epochs)


@pytest.mark.parametrize("search", SEARCHES)
def test_every_search_composes(search):
    cfg = _compose([f"hparams_search={search}", "experiment=table1"], hydra=True)
    assert cfg.hydra.sweeper.params


_cli = train_cli  # python train.py ... in a subprocess


@pytest.mark.parametrize("overrides, needle", [
    (["optimizer=sam", "optimizer.rho=-1"], "rho"),
    (["model.rank=[8,6,8,2]"], "model.rank"),
    (["optimizer=das", "optimizer/base=adam", "+optimizer.base.nesterov=true"],
     "optimizer.base.nesterov is not an argument of torch.optim.Adam"),
    (["optimizer=das", "optimizer.normalization=both"], "normalization"),
    (["optimizer=sam", "+optimizer.rhoo=0.1"], "optimizer.rhoo is not an argument of "
     "tensam.optim.SAM"),
    (["experiment=table1", "optimizer=das", "+presets.das.alpah=0.1"],
     "unknown top-level key(s) ['presets']"),
    (["+lerning_rate=0.1"], "unknown top-level key(s) ['lerning_rate']"),
    (["scheduler=cosine", "+scheduler.min_facter=0.1"], "scheduler.min_facter"),
    (["optimizer=das", "optimizer.alpha=inf"], "optimizer.alpha=inf must be finite"),
    (["optimizer=das", "optimizer.alpha=abc"], "optimizer.alpha"),
    (["optimizer=das", "optimizer.alpha=nan"], "optimizer.alpha=nan must be finite"),
    (["steps=abc"], "steps"),
    (["model.rank=0"], "model.rank"),
    (["objective=foo"], "objective"),
])
def test_bad_config_fails_with_one_clear_line(tmp_path, overrides, needle):
    out = _cli("steps=2", "logger=disabled", f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tensam: configuration error:") and needle in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_divergence_exits_non_zero_in_one_line(tmp_path):
    out = _cli("optimizer/base=sgd", "optimizer.base.lr=1e6", "steps=50", "logger=disabled",
               f"hydra.run.dir={tmp_path}")
    assert out.returncode == 3
    assert re.fullmatch(r"tensam: the training loss is \S+ at step \d+: the run diverged .*",
                        out.stderr.strip())


def test_a_diverged_job_of_a_local_multirun_does_not_kill_its_neighbour(tmp_path):
    """Under hydra/launcher=local (joblib processes) a diverging job crashed the grid with
    BrokenProcessPool (its DivergenceError did not unpickle) and killed the healthy job beside
    it; a rerun crashed again. A diverged run is a result: its summary says so, the grid goes
    on, a rerun returns both results without training."""
    args = ["-m", "hydra/launcher=local", "experiment=blobs", "epochs=1", "logger=disabled",
            "threads=1", "optimizer.base.lr=1e6,0.05", f"hydra.sweep.dir={tmp_path}"]
    for attempt in range(2):
        out = _cli(*args, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "BrokenProcessPool" not in out.stderr
        assert re.search(r"tensam: the training loss is nan at step \d+: the run diverged",
                         out.stderr)
        status = {p.parent.name.split("optimizer.base.lr=")[1].split(",")[0]:
                  json.loads(p.read_text())["status"] for p in tmp_path.glob("*/summary.json")}
        assert status == {"1000000.0": "diverged", "0.05": "finished"}, attempt
    assert "already holds this run's summary" in out.stderr


def test_train_py_runs_its_own_clone_not_an_installed_one(tmp_path):
    """Another tensam first on the path (as an install from another clone would be) must not
    be what this clone's train.py runs."""
    fake = tmp_path / "elsewhere" / "tensam"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('the other clone')\n")
    out = _cli("--cfg", "job", env={"PYTHONPATH": str(fake.parent)}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "  base:\n    _target_: torch.optim.Adam" in out.stdout


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("python train.py"):
                commands.append(shlex.split(line)[2:])
    return commands


def test_the_readme_shows_train_commands():
    assert len(_readme_commands()) >= 4


@pytest.mark.parametrize("args", _readme_commands(), ids=" ".join)
def test_every_readme_command_runs_cleanly(tmp_path, args):
    """Each ``python train.py ...`` line of the README, shortened to a few steps (and a
    two-trial sweep), exits 0 with finite results."""
    short = ["steps=60", "epochs=null", "logger=disabled", "threads=1"]
    if "-m" in args:
        short += [f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweeper.n_trials=2"] \
            if any(a.startswith("hparams_search=") for a in args) else \
            [f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    else:
        short.append(f"hydra.run.dir={tmp_path / 'run'}")
    out = _cli(*args, *short, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "nan" not in out.stdout.lower()


def test_the_readmes_worked_example_adds_an_optimizer_with_one_class_and_one_yaml(tmp_path):
    """The README's LinfSAM (one class, one YAML file outside the repository) trains through
    train.py, its values checked and fingerprinted, and steps as its equation says."""
    command = readme_example(tmp_path, "linf_sam", "optimizer/linf_sam.yaml", "optimizer=linf_sam")
    env = {"PYTHONPATH": str(tmp_path)}
    out = _cli(*command, "epochs=1", "logger=disabled", f"hydra.run.dir={tmp_path / 'run'}",
               cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["optimizer"]["_target_"] == "linf_sam.LinfSAM"
    assert summary["config"]["optimizer"]["rho"] == 0.05
    assert summary["config"]["optimizer"]["base"]["_target_"] == "torch.optim.SGD"
    assert summary["settings"]["optimizer.rho"] == 0.05
    bad = _cli(*command, "optimizer.rho=abc", "steps=2", "logger=disabled",
               f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "optimizer.rho='abc' is not of type float" in bad.stderr

    sys.path.insert(0, str(tmp_path))
    try:
        from linf_sam import LinfSAM
    finally:
        sys.path.remove(str(tmp_path))
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    target = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    opt = LinfSAM(torch.optim.SGD([w], lr=0.1), rho=0.05)

    def closure():
        opt.zero_grad()
        loss = ((w - target) ** 4).sum()
        loss.backward()
        return loss

    w0 = w.detach().clone()
    opt.step(closure)
    at = w0 + 0.05 * torch.sign(4 * (w0 - target) ** 3)  # w + rho sign(g)
    torch.testing.assert_close(w.detach(), w0 - 0.1 * 4 * (at - target) ** 3)
