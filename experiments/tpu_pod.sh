#!/usr/bin/env bash
# Pretrain on a Cloud TPU pod slice: this checkout is copied to every worker and the same
# command runs on all of them (one process per host); jax.distributed finds the other workers
# by itself on TPU VMs.
#   bash experiments/tpu_pod.sh TPU_NAME ZONE gs://BUCKET/prepared gs://BUCKET/run [CONFIG] [--config.x=y ...]
# The prepared directory and the workdir must be on storage every worker reads (GCS).
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; data=${3:?prepared dir}; workdir=${4:?workdir}
config=${5:-configs/base.py}
overrides="${*:6}"
cd "$(dirname "$0")/.."
gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all . "$tpu":~/roberta_jax
# Preemptible slices: SIGTERM makes every worker save at the same step and exit 0; running this
# script again resumes from the newest checkpoint.
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  cd ~/roberta_jax && pip install -q -e . 'jax[tpu]'
  roberta-jax pretrain --config $config --workdir $workdir --config.data.path=$data \
      --config.mesh.fsdp=-1 --config.mesh.data=1 $overrides
"
