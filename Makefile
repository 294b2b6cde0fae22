# tensam build / test entry points.  `make test` on a fresh clone creates .venv itself.

PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed
NLP_STAMP := .venv/.installed-nlp

export WANDB_MODE ?= offline

.PHONY: venv setup test lint reproduce-table1 reproduce-fig1 reproduce-fig2 theory \
	reproduce-optimizers reproduce-all bench clean reproduce-noise-cpu reproduce-normdyn-cpu \
	reproduce-table2 reproduce-fig3 reproduce-fig3-cpu bench-vision gpu-check reproduce-drift-cpu \
	reproduce-table4-cpu reproduce-table3-cpu reproduce-table3 bench-peft \
	reproduce-table5-cpu reproduce-table4 reproduce-table5 reproduce-table5-ft reproduce-table6 \
	reproduce-fastpath-check reproduce-adapters-cpu

venv: $(STAMP)

# Reinstall only when pyproject.toml or constraints.txt change (or the venv is missing). The
# ranges of pyproject.toml are installed at the exact versions of constraints.txt (the tested set).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(PIP) check
	touch $@

setup: $(NLP_STAMP)

$(NLP_STAMP): $(STAMP)
	$(PIP) install -c constraints.txt -e ".[nlp]"
	$(PIP) check
	touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .

# Paper artefacts (see experiments/*/README.md). Each target trains its grid as Hydra multiruns
# into a fixed directory under runs/ (git-ignored), then builds its tables and figures into
# results/. tensam.train.run skips a run directory that holds a finished summary of the same
# settings (and refuses one of other settings), so an interrupted target resumes when run again,
# and targets that share runs (Table 1, Figure 2, optimizers) train each of them once.
#   LAUNCHER=local   2 local processes (src/tensam/configs/hydra/launcher/local.yaml)
#   LAUNCHER=slurm   a SLURM cluster (launcher/slurm.yaml); e.g. GRID_ARGS=hydra.launcher.partition=cpu
#   LOGGER=default   also log every run to W&B (mode from WANDB_MODE, offline by default)
LAUNCHER  ?= local
LOGGER    ?= disabled
GRID_ARGS ?=
MULTIRUN  = $(PY) train.py -m hydra/launcher=$(LAUNCHER) logger=$(LOGGER) $(GRID_ARGS)
# Table 1's runs, both protocols (50,000 steps), into runs/table1/<protocol>/<optimizer>/seed<k>;
# checkpoint.pt keeps the final weights (Figure 2, DAS vs Adam). `$$` is a `$` for Hydra.
TABLE1    = $(MULTIRUN) experiment=table1,table1_paper checkpoint_every=5000 \
	hydra.sweep.dir=runs/table1
BY_OPTIMIZER = 'hydra.sweep.subdir=$${task.protocol}/$${hydra:runtime.choices.optimizer}/seed$${seed}'
# HOOI (Table 1's non-gradient baseline): a run of 0 steps whose summary holds the baselines.
HOOI      = 'hydra.sweep.subdir=$${task.protocol}/hooi/seed$${seed}' optimizer=none steps=0 \
	baselines=true

# Each stage's wall time goes to runs/table1/stages.jsonl (tensam.reports.stages), which
# make_table1 prints in results/table1.md.
STAGE = $(PY) -m tensam.reports.stages --log runs/table1/stages.jsonl --stage
reproduce-table1: venv
	$(STAGE) training -- $(TABLE1) $(BY_OPTIMIZER) optimizer=sam,das,none seed=0,1,2
	$(STAGE) hooi -- $(TABLE1) $(HOOI) seed=0,1,2
	$(STAGE) diagnostics -- $(PY) scripts/table1_diagnostics.py --root runs/table1
	$(PY) scripts/make_table1.py --root runs/table1

# Figure 1: SGD, SAM, DAS x noise level x batching on Tucker-2 denoising, Q and Cov every step.
reproduce-fig1: venv
	$(MULTIRUN) experiment=fig1 optimizer=sam,das,sgd task.batching=fresh,full \
		task.noise=0.0,0.5,1.0,2.0 hydra.sweep.dir=runs/fig1 \
		'hydra.sweep.subdir=$${task.batching}/$${hydra:runtime.choices.optimizer}/noise$${task.noise}'
	$(PY) scripts/reproduce_fig1.py --root runs/fig1

# Figure 2: the split-0 models of Table 1 (trained here unless reproduce-table1 already did).
reproduce-fig2: venv
	$(TABLE1) $(BY_OPTIMIZER) optimizer=sam,das,none seed=0
	$(PY) scripts/reproduce_fig2.py --root runs/table1

# The norm-dynamics theorems as one-step measurements (float64); no training runs.
theory: venv
	$(PY) scripts/theory.py

# Every optimizer on the Table 1 runs (shared with reproduce-table1) and on the Figure 1 task,
# then the step-time and memory measurements (runs/optimizers/measure) and the report.
reproduce-optimizers: venv
	$(TABLE1) $(BY_OPTIMIZER) optimizer=sam,asam,nusam,das,none seed=0,1,2
	$(MULTIRUN) experiment=fig1 task.batching=fresh task.noise=1.0 log_every=100 \
		optimizer=sam,asam,nusam,das,none seed=0,1,2 hydra.sweep.dir=runs/optimizers/fig1 \
		'hydra.sweep.subdir=$${hydra:runtime.choices.optimizer}/seed$${seed}'
	$(PY) scripts/compare_optimizers.py --table1-root runs/table1 --fig1-root runs/optimizers/fig1

reproduce-all: reproduce-table1 reproduce-fig1 reproduce-fig2 theory reproduce-optimizers bench

# Per-step cost of SAM and DAS vs the base optimizer, timed in one process (no training runs).
bench: venv
	$(PY) scripts/bench_optim.py
	$(PY) scripts/bench_table1_batch.py

# --- Tensorized ResNets on CIFAR-10 (Sec. 5.2). Data: TENSAM_CIFAR10=<cifar10-jpg.tar.gz or an
# ImageFolder dir>, or task.data.source=torchvision via GRID_ARGS (downloads). Each run directory
# is runs/<grid>/<experiment name>/<optimizer>/seed<k>[/...].
VISION_DIR = 'hydra.sweep.subdir=$${name}/$${hydra:runtime.choices.optimizer}/seed$${seed}'
SEED ?= 0

# CPU scale, 2 cores: Table 2's claim in the memorization regime (TR-ResNet-20 r10, 2k subset,
# 60% noise, 150 epochs, the fast CPU path: one run at a time on both cores, bf16 autocast,
# channels_last; about 8 min per SGD run, 16 per SAM run, 42 min per seed for the 4 rows).
# Seeds are paired across methods; a finished run is skipped and an interrupted one resumes
# from its checkpoint, so rerunning the target continues the study. Runs:
# $(CPU_RUNS)/noise_cpu/<sgd|sam|das|das_layer>/seed<k>. Then the norm dynamics of a real
# network (300 steps per method, about 10 min).
NOISE_SEEDS ?= 0,1,2
ONE_AT_A_TIME = hydra.launcher.n_jobs=1
# where the CPU-scale studies write their runs (git-ignored). Each target then copies the runs'
# records, without checkpoints, into results/runs/ (scripts/archive_runs.py) and builds its tables
# from those records, so a clone rebuilds them with the same command; copying the records back
# into CPU_RUNS resumes a study elsewhere.
CPU_RUNS ?= runs/vision_cpu
NOISE_DIR = hydra.sweep.dir=$(CPU_RUNS)
reproduce-noise-cpu: venv
	$(MULTIRUN) $(ONE_AT_A_TIME) experiment=noise_cpu seed=$(NOISE_SEEDS) optimizer=sgd,sam,das \
		$(NOISE_DIR) $(VISION_DIR)
	$(MULTIRUN) $(ONE_AT_A_TIME) experiment=noise_cpu optimizer=das optimizer.normalization=layer \
		seed=$(NOISE_SEEDS) $(NOISE_DIR) 'hydra.sweep.subdir=$${name}/das_layer/seed$${seed}'
	$(PY) scripts/archive_runs.py $(CPU_RUNS)/noise_cpu results/runs/noise_cpu
	$(PY) scripts/make_table2.py --root results/runs/noise_cpu --out results/noise_cpu.md \
		--title "Label noise at CPU scale, memorization regime: TR-ResNet-20 (rank 10), CIFAR-10 2k subset, 60% noise, 150 epochs"

# Does the fast CPU path change the science? SGD on noise_cpu for 50 epochs, 3 paired seeds, one
# run at a time on both cores (about 75 min): fp32 contiguous, bf16 autocast contiguous (the
# precision alone) and bf16 + channels_last (the fast path).
# Runs: $(CPU_RUNS)/fastpath/<fp32|bf16|fast>/seed<k>.
FASTPATH = $(MULTIRUN) $(ONE_AT_A_TIME) experiment=noise_cpu optimizer=sgd epochs=50 \
	seed=$(NOISE_SEEDS) hydra.sweep.dir=$(CPU_RUNS)/fastpath
reproduce-fastpath-check: venv
	$(FASTPATH) precision=fp32 model.channels_last=false 'hydra.sweep.subdir=fp32/seed$${seed}'
	$(FASTPATH) 'hydra.sweep.subdir=fast/seed$${seed}'
	$(FASTPATH) model.channels_last=false 'hydra.sweep.subdir=bf16/seed$${seed}'
	$(PY) scripts/archive_runs.py $(CPU_RUNS)/fastpath results/runs/fastpath
	$(PY) scripts/make_fastpath_check.py --root results/runs/fastpath --out results/fastpath_check.md

reproduce-normdyn-cpu: venv
	$(MULTIRUN) experiment=normdyn_cpu optimizer=sam,sgd,das seed=$(SEED) \
		hydra.sweep.dir=runs/vision_cpu $(VISION_DIR)
	$(PY) scripts/make_normdyn.py --root runs/vision_cpu/normdyn_cpu --seed $(SEED)

# DAS's normalisation and Theorem 3/5's drift of Q_l on TR-ResNet-20: one-step drifts of SGD,
# SAM, DAS-global and DAS-layer from the same weights and batch, float64, 3 seeds x 300 steps
# (resumable; about 25 min on 2 cores). -> results/normdyn_drift.{md,png}
reproduce-drift-cpu: venv
	$(PY) scripts/normdyn_drift.py --root runs/vision_cpu/normdyn_drift --seeds 0 1 2 --steps 300 \
		--rhos 0.05 0.005 --threads 1

# Paper scale (GPUs; LAUNCHER=slurm GRID_ARGS='hydra.launcher.gpus_per_node=1 ...' on a cluster).
# Table 2: TR-ResNet-32 r15, 200 epochs, noise 40/60/80%, 3 seeds.
reproduce-table2: venv
	$(MULTIRUN) experiment=table2 optimizer=sam,sgd,das task.data.label_noise=0.4,0.6,0.8 \
		seed=0,1,2 hydra.sweep.dir=runs/table2 \
		'hydra.sweep.subdir=noise$${task.data.label_noise}/$${hydra:runtime.choices.optimizer}/seed$${seed}'
	$(PY) scripts/make_table2.py --root runs/table2

# Figure 3, one command: for each model <conv><rank> of FIG3_MODELS, tune rho (SAM) and alpha
# (DAS) over the paper's grid on the 45k/5k split (hparams_search=*_optuna, scored on the 5,000
# validation images), read the best values back from the tuning runs (scripts/tuned_value.py),
# and train FIG3_SEEDS seeds of SGD, SAM and DAS at them on all 50k images (180 epochs, test
# set). Tuning runs: <root>/<experiment>_tune/<model>/<rho|alpha>/<value>; final runs:
# <root>/<experiment>/<model>/<optimizer>/seed<k>. Finished runs are skipped, so a rerun resumes.
# $(call fig3_grid,<experiment>,<models>,<seeds>,<root>,<tune at>,<extra overrides>): <tune at>
# empty tunes every model; "cp=40 tr=10" tunes each decomposition at that rank only and uses its
# values for every rank of the decomposition.
define fig3_grid
for m in $(2); do \
  conv=$${m%%[0-9]*}; rank=$${m#$$conv}; at=$$rank; \
  for t in $(5); do if [ "$${t%%=*}" = "$$conv" ]; then at=$${t#*=}; fi; done; \
  tune=$(4)/$(1)_tune/$$conv$$at; \
  for h in rho alpha; do \
    $(MULTIRUN) $(6) experiment=$(1)_tune model.conv=$$conv model.rank=$$at \
      hparams_search=$${h}_optuna hydra.sweep.dir=$$tune/$$h \
      "hydra.sweep.subdir=\$${optimizer.$$h}" || exit 1; \
  done; \
  rho=$$($(PY) scripts/tuned_value.py --root $$tune/rho --key optimizer.rho) || exit 1; \
  alpha=$$($(PY) scripts/tuned_value.py --root $$tune/alpha --key optimizer.alpha) || exit 1; \
  for opt in "sgd" "sam optimizer.rho=$$rho" "das optimizer.alpha=$$alpha"; do \
    $(MULTIRUN) $(6) experiment=$(1) model.conv=$$conv model.rank=$$rank optimizer=$$opt \
      seed=$(3) hydra.sweep.dir=$(4)/$(1) \
      'hydra.sweep.subdir=$${model.conv}$${model.rank}/$${hydra:runtime.choices.optimizer}/seed$${seed}' \
      || exit 1; \
  done; \
done
endef
FIG3_MODELS ?= cp10 cp20 cp40 cp80 cp160 tr5 tr8 tr10 tr15 tr20
FIG3_SEEDS ?= 0,1,2,3,4,5,6,7,8,9
reproduce-fig3: venv
	$(call fig3_grid,fig3,$(FIG3_MODELS),$(FIG3_SEEDS),runs,,)
	$(PY) scripts/make_fig3.py --root runs/fig3 --out results/fig3

# Figure 3 at CPU scale (2 cores, about 3.2 h alone on the machine): CP and TR ResNet-20 at three ranks each (about
# 17x, 4.7x and 1.2x compression), 5k training images, 25 epochs, 2 paired seeds; rho and alpha
# tuned once per decomposition at its middle rank (10 epochs, the paper's grid, validation
# split); one run at a time on both cores. Runs under $(CPU_RUNS)/fig3_cpu{,_tune}/.
FIG3_CPU_MODELS ?= cp10 cp40 cp160 tr5 tr10 tr20
FIG3_CPU_SEEDS ?= 0,1
reproduce-fig3-cpu: venv
	$(call fig3_grid,fig3_cpu,$(FIG3_CPU_MODELS),$(FIG3_CPU_SEEDS),$(CPU_RUNS),cp=40 tr=10,$(ONE_AT_A_TIME))
	for d in fig3_cpu fig3_cpu_tune; do $(PY) scripts/archive_runs.py $(CPU_RUNS)/$$d results/runs/$$d; done
	$(PY) scripts/make_fig3.py --root results/runs/fig3_cpu --tune-root results/runs/fig3_cpu_tune \
		--out results/fig3_cpu --title "Figure 3 at CPU scale: CP- and TR-ResNet-20, CIFAR-10 5k subset, 25 epochs"

# Step time of dense vs TR-ResNet-20 and of SAM/DAS vs SGD, and the data pipeline, on CPU.
bench-vision: venv
	$(PY) scripts/bench_vision.py

# On a machine with a CUDA GPU (under 8 minutes): the CUDA-marked tests, then the step times of
# dense / TR-ResNet-20 / TR-ResNet-32 with SGD, SAM and DAS -> results/bench_vision_gpu.md.
gpu-check: venv
	$(PY) -m pytest -m cuda -q tests
	$(PY) scripts/bench_vision.py --device cuda --threads 4 --blocks 10 --steps 10

# --- Compressing a trained network into Tensor-Train form and fine-tuning it (Sec. 5.2, Table 3).
# CPU scale: a dense ResNet-20 trained on CIFAR-10 (runs/table3_cpu/pretrain, kept, trained once),
# compressed by TT-SVD to about 40% of its conv weights and scored (runs/table3_cpu/before), then
# fine-tuned for 2 epochs with SGD, SAM and DAS, 2 seeds -> results/table3_cpu.md.
TABLE3_DIR = 'hydra.sweep.subdir=$${hydra:runtime.choices.optimizer}/seed$${seed}'
reproduce-table3-cpu: venv
	$(PY) train.py experiment=table3_cpu_pretrain logger=$(LOGGER) seed=0 threads=2 \
		hydra.run.dir=runs/table3_cpu/pretrain
	$(PY) train.py experiment=table3_cpu logger=$(LOGGER) optimizer=none epochs=null steps=0 \
		threads=2 hydra.run.dir=runs/table3_cpu/before
	$(MULTIRUN) experiment=table3_cpu optimizer=sgd,sam,das seed=0,1 \
		hydra.sweep.dir=runs/table3_cpu $(TABLE3_DIR)
	$(PY) scripts/make_table3.py --root runs/table3_cpu --out results/table3_cpu.md \
		--title "Table 3's pipeline at CPU scale: dense ResNet-20 on CIFAR-10, TT-compressed to 40% of its conv weights, fine-tuned 2 epochs"

# Paper scale (ImageNet as TENSAM_IMAGENET=<ImageFolder dir>, GPUs): TT-ResNet-18 from torchvision's
# IMAGENET1K_V1, scored before fine-tuning, then SGD / SAM / DAS for 15 epochs, 5 seeds, each run
# data-parallel through $(TORCHRUN) -> results/table3.md.
TORCHRUN ?= torchrun --nproc_per_node 8
reproduce-table3: venv
	$(PY) train.py experiment=table3 logger=$(LOGGER) optimizer=none epochs=null steps=0 \
		hydra.run.dir=runs/table3/before
	for opt in sgd sam das; do for seed in 0 1 2 3 4; do \
		$(TORCHRUN) train.py experiment=table3 logger=$(LOGGER) optimizer=$$opt seed=$$seed \
			hydra.run.dir=runs/table3/$$opt/seed$$seed || exit 1; done; done
	$(PY) scripts/make_table3.py --root runs/table3 --out results/table3.md

# --- Tensor adapters on language models (Sec. 5.3). Data: TENSAM_GLUE=<dir with SST-2/ and RTE/
# holding GLUE's train.tsv and dev.tsv> (unset: datasets.load_dataset from the hub).
# CPU scale (Table 4's protocol on all-MiniLM-L6-v2, 2 runs at a time): FLoRA and LoRETTA_rep with
# Adam, SAM and DAS, LoRA r 8 and full fine-tuning, SST-2 and RTE, 3 data seeds; the table of
# test accuracy (mean +- std) -> results/table4_cpu.md. Run directories:
# runs/table4_cpu/<task>/<adapter, none = full fine-tuning>/<optimizer>/seed<data seed>.
GLUE_TASKS ?= glue_sst2,glue_rte
GLUE_SEEDS ?= 13,21,42
GLUE_CPU = $(MULTIRUN) experiment=glue_minilm task=$(GLUE_TASKS) task.data_seed=$(GLUE_SEEDS) \
	hydra.sweep.dir=runs/table4_cpu
GLUE_RUN = $${hydra:runtime.choices.optimizer}/seed$${task.data_seed}
GLUE_ADAPTED = 'hydra.sweep.subdir=$${task.name}/$${hydra:runtime.choices.model/adapter}/$(GLUE_RUN)'
reproduce-table4-cpu: setup
	$(GLUE_CPU) model/adapter=flora,loretta_rep optimizer=none,sam,das $(GLUE_ADAPTED)
	$(GLUE_CPU) model/adapter=lora $(GLUE_ADAPTED)
	$(GLUE_CPU) model=minilm_full optimizer.base.lr=5e-5 'hydra.sweep.subdir=$${task.name}/none/$(GLUE_RUN)'
	$(PY) scripts/make_table4.py --root runs/table4_cpu --out results/table4_cpu.md

# Tables 4-5's claim at CPU scale, powered (experiments/adapters/README.md): MiniLM read out by the
# cosine to frozen label descriptions, so only the adapter cores train; few-shot SST-2 at k = 16
# and 64, 10 data seeds, FLoRA and LoRETTA_rep (reference initialisation) with Adam, SAM (rho grid)
# and DAS (alpha grid) over Adam (lr 1e-3), 100 steps; per data seed the grid point with the best
# validation accuracy is kept. Two runs at a time, one thread each; the seeds run in chunks so
# that an interruption leaves whole paired seeds. LoRETTA_rep with its zero initialisation (dW = 0)
# for the norm dynamics (k = 16, 3 seeds). A finished run is skipped, so rerunning resumes.
# Runs: $(ADAPTER_RUNS)/study/<adapter>/k<k>/<adam|sam/rho<r>|das/alpha<a>>/seed<s>,
# .../study/zero_shot/k<k>/seed<s> and $(ADAPTER_RUNS)/zero_init/...
# -> results/adapters_cpu.md, results/adapters_normdyn.{md,png}.
ADAPTER_RUNS ?= runs/adapters_cpu
ADAPTER_SEED_CHUNKS ?= 13,21 42,87 100,1 2,3 4,5
ADAPTER_KS ?= 16,64
ADAPTER_RHO ?= 0.01,0.1
ADAPTER_ALPHA ?= 0.1,0.5
NORMDYN_RHO ?= 0.1
NORMDYN_ALPHA ?= 0.5
# DAS's lambda_k next to Adam's step, per core, after 20 steps (results/adapters_das_scale.md)
DAS_SCALE = experiment=adapters_cpu task.data_seed=13 optimizer=das optimizer.alpha=$(NORMDYN_ALPHA)
ADAPTER_CELL = $${hydra:runtime.choices.model/adapter}/k$${task.k}
comma := ,
empty :=
space := $(empty) $(empty)
# $(call adapter_grid,<root>,<ks>,<seeds>,<adapters>,<extra overrides>,<rhos>,<alphas>): Adam, SAM
# over the rho grid, DAS over the alpha grid (one shell command)
define adapter_grid
$(MULTIRUN) experiment=adapters_cpu task.k=$(2) task.data_seed=$(3) hydra.sweep.dir=$(1) \
	model/adapter=$(4) $(5) 'hydra.sweep.subdir=$(ADAPTER_CELL)/adam/seed$${task.data_seed}' && \
$(MULTIRUN) experiment=adapters_cpu task.k=$(2) task.data_seed=$(3) hydra.sweep.dir=$(1) \
	model/adapter=$(4) $(5) optimizer=sam optimizer.rho=$(6) \
	'hydra.sweep.subdir=$(ADAPTER_CELL)/sam/rho$${optimizer.rho}/seed$${task.data_seed}' && \
$(MULTIRUN) experiment=adapters_cpu task.k=$(2) task.data_seed=$(3) hydra.sweep.dir=$(1) \
	model/adapter=$(4) $(5) optimizer=das optimizer.alpha=$(7) \
	'hydra.sweep.subdir=$(ADAPTER_CELL)/das/alpha$${optimizer.alpha}/seed$${task.data_seed}'
endef
reproduce-adapters-cpu: setup
	$(MULTIRUN) experiment=adapters_cpu steps=0 task.k=$(ADAPTER_KS) \
		task.data_seed=$(subst $(space),$(comma),$(strip $(ADAPTER_SEED_CHUNKS))) \
		hydra.sweep.dir=$(ADAPTER_RUNS)/study 'hydra.sweep.subdir=zero_shot/k$${task.k}/seed$${task.data_seed}'
	for seeds in $(ADAPTER_SEED_CHUNKS); do \
		$(call adapter_grid,$(ADAPTER_RUNS)/study,$(ADAPTER_KS),$$seeds,flora$(comma)loretta_rep,,$(ADAPTER_RHO),$(ADAPTER_ALPHA)) \
		|| exit 1; done
	$(call adapter_grid,$(ADAPTER_RUNS)/zero_init,16,13$(comma)21$(comma)42,loretta_rep,model.adapter.init=zero,$(NORMDYN_RHO),$(NORMDYN_ALPHA))
	$(PY) scripts/archive_runs.py $(ADAPTER_RUNS) results/runs/adapters_cpu
	$(PY) scripts/make_table4.py --root results/runs/adapters_cpu/study --out results/adapters_cpu.md \
		--title "Tables 4-5's claim at CPU scale: tensor adapters on all-MiniLM-L6-v2 with a cosine readout, few-shot SST-2"
	$(PY) scripts/make_normdyn_adapters.py --root results/runs/adapters_cpu/study \
		--root results/runs/adapters_cpu/zero_init \
		--k 16 --rho $(NORMDYN_RHO) --alpha $(NORMDYN_ALPHA) --out results/adapters_normdyn
	$(PY) scripts/das_scale.py --out results/adapters_das_scale.md \
		--case FLoRA "$(DAS_SCALE) model/adapter=flora" \
		--case LoRETTA_rep "$(DAS_SCALE) model/adapter=loretta_rep" \
		--case "LoRETTA_rep, zero init" "$(DAS_SCALE) model/adapter=loretta_rep model.adapter.init=zero"

# Table 5's causal-LM path at CPU scale: a 2-layer random OPT with LoRETTA_rep on the SuperGLUE
# files at hand ($$TENSAM_SUPERGLUE), AdamW / SAM / DAS and zero-shot; it tests code, not accuracy
# (random weights). Runs: runs/table5_cpu/<task>/<optimizer> and runs/table5_cpu/zero_shot/<task>.
SUPERGLUE_TASKS ?= superglue_cb,superglue_boolq,superglue_wsc,superglue_copa,superglue_rte
reproduce-table5-cpu: setup
	$(MULTIRUN) experiment=table5_cpu task=$(SUPERGLUE_TASKS) optimizer=none,sam,das \
		hydra.sweep.dir=runs/table5_cpu \
		'hydra.sweep.subdir=$${task.name}/$${hydra:runtime.choices.optimizer}'
	$(MULTIRUN) experiment=table5_cpu task=$(SUPERGLUE_TASKS) steps=0 \
		hydra.sweep.dir=runs/table5_cpu/zero_shot 'hydra.sweep.subdir=$${task.name}'
	$(PY) scripts/make_table5.py --root runs/table5_cpu --out results/table5_cpu.md \
		--title "Table 5's code path at CPU scale: a random 2-layer OPT with LoRETTA_rep"

# Paper scale, Tables 4-6 (GPUs and hub downloads: RoBERTa-large, OPT-6.7B, the datasets). Each
# grid point is one run directory named by its overrides; a finished run is skipped on a rerun.
# Table 4: 6 tasks x 5 data seeds x (zero-shot, FLoRA Adam 3 lr, SAM 3 lr x 3 rho, DAS 3 lr x
# 3 alpha, LoRA r 8 3 lr, full fine-tuning 3 lr) = 900 runs.
GRID_DIR = 'hydra.sweep.subdir=$${hydra.job.override_dirname}'
T4_TASKS ?= glue_sst2,glue_sst5,glue_snli,glue_mnli,glue_rte,glue_trec
T4 = $(MULTIRUN) experiment=table4 task=$(T4_TASKS) task.data_seed=13,21,42,87,100 \
	hydra.sweep.dir=runs/table4 $(GRID_DIR)
LR_ADAPTER = optimizer.base.lr=1e-4,3e-4,5e-4
reproduce-table4: setup
	$(T4) model=roberta_large_prompt_full steps=0
	$(T4) $(LR_ADAPTER)
	$(T4) optimizer=sam $(LR_ADAPTER) optimizer.rho=0.001,0.01,0.1
	$(T4) optimizer=das $(LR_ADAPTER) optimizer.alpha=0.1,0.5,0.7
	$(T4) model/adapter=lora $(LR_ADAPTER)
	$(T4) model=roberta_large_prompt_full optimizer.base.lr=1e-5,3e-5,5e-5
	$(PY) scripts/make_table4.py --root runs/table4 --out results/table4.md

# Table 5: 7 tasks x (zero-shot, LoRETTA AdamW 3 lr, SAM 3 lr x 3 rho, DAS 3 lr x 3 alpha,
# LoRA r 16 3 lr); reproduce-table5-ft adds full fine-tuning (about 54 GB per process in
# bf16: weights, gradients and AdamW's two states, before activations).
T5_TASKS ?= superglue_cb,superglue_boolq,superglue_wsc,superglue_copa,superglue_record,squad,drop
T5 = $(MULTIRUN) experiment=table5 task=$(T5_TASKS) hydra.sweep.dir=runs/table5 $(GRID_DIR)
reproduce-table5: setup
	$(T5) model=opt_6.7b_full steps=0 epochs=null
	$(T5) $(LR_ADAPTER)
	$(T5) optimizer=sam $(LR_ADAPTER) optimizer.rho=0.05,0.1,0.2
	$(T5) optimizer=das $(LR_ADAPTER) optimizer.alpha=0.5,1,2
	$(T5) model/adapter=lora model.adapter.r=16 model.adapter.dropout=0 $(LR_ADAPTER)
	$(PY) scripts/make_table5.py --root runs/table5 --out results/table5.md

reproduce-table5-ft: setup
	$(T5) model=opt_6.7b_full optimizer.base.lr=1e-5,3e-5,5e-5
	$(PY) scripts/make_table5.py --root runs/table5 --out results/table5.md

# Table 6: per-step time of AdamW, SAM and DAS with LoRETTA on OPT-6.7B (random weights, bf16
# frozen base) on one GPU, side by side in one process -> results/table6.md.
reproduce-table6: setup
	$(PY) scripts/bench_peft.py --model opt_6.7b_random --device cuda --precision bf16 \
		--batch 2 --length 256 --out results/table6.md

# Per-step time and optimizer memory of Adam, SAM and DAS on FLoRA and LoRETTA_rep (MiniLM), side
# by side in one process -> results/bench_peft.md (bench_peft_gpu.md with BENCH_PEFT_ARGS=--device cuda).
BENCH_PEFT_ARGS ?=
bench-peft: setup
	$(PY) scripts/bench_peft.py $(BENCH_PEFT_ARGS)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +
