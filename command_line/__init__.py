"""The `compress` command line: above the pipeline (`compressor`) and the measurements (`bench`), which never
import it or each other's commands."""
