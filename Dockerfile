# curate on a CUDA machine. No weights are baked in: mount a checkpoint folder (e.g. -v ~/ckpt:/ckpt and
# --pretrained /ckpt/open_clip_model.safetensors) or let open_clip fetch a pretrained tag where the machine
# has network access (mount ~/.cache/huggingface to keep the download).
#   docker build -t curate .
#   docker run --gpus all -v $PWD/data:/data curate embed '/data/{00000..00099}.tar' --run /data/run \
#       --model ViT-B-32 --pretrained /data/ckpt/open_clip_model.safetensors
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HOME=/cache/huggingface CURATE_SAMPLE_DIR=/opt/curate/shards
WORKDIR /opt/curate
COPY pyproject.toml README.md ./
COPY curate ./curate
COPY shards ./shards
RUN pip install ".[gpu,ray]" && curate --version && curate shards validate shards/sample/train --no-decode

ENTRYPOINT ["curate"]
CMD ["--help"]
