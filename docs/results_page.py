"""Write the Benchmarks and results page from ``benchmarks/results/*.json`` (placeholder)."""


def write_results_page(out: str, results_dir: str) -> None:
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("Benchmarks and results\n======================\n\nTo be generated.\n")
