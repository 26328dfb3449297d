#!/usr/bin/env bash
# Pretrain on a Cloud TPU pod slice: this checkout is copied to every worker and the same
# command runs on all of them (one process per host); jax.distributed finds the other workers
# by itself on TPU VMs.
#   bash experiments/tpu_pod.sh TPU_NAME ZONE gs://BUCKET/prepared gs://BUCKET/run [CONFIG] [--config.x=y ...]
# The workdir lives on the bucket (checkpoints, metrics, TensorBoard events, the tokenizer).
# The prepared data is copied from the bucket to the same local path on every worker first;
# at start-up every process checks that its copy's manifest equals process 0's.
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; data=${3:?prepared dir on gs://}; workdir=${4:?workdir}
config=${5:-configs/base.py}
overrides="${*:6}"
cd "$(dirname "$0")/.."
gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all . "$tpu":~/roberta_jax
# Preemptible slices: SIGTERM to any worker makes every worker save the same step and exit 0
# (they agree every --config.distributed.preemption_check_every steps); running this script
# again resumes from the newest checkpoint, on the same or another number of workers.
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  cd ~/roberta_jax && pip install -q -e . 'jax[tpu]'
  mkdir -p ~/prepared && gcloud storage rsync --recursive $data ~/prepared
  roberta-jax pretrain --config $config --workdir $workdir --config.data.path=\$HOME/prepared \
      --config.mesh.fsdp=-1 --config.mesh.data=1 $overrides
"
