from compressor.cli import app

app(prog_name="compress")
