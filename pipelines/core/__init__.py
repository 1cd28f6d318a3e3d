"""What every pipeline step shares: its declaration (`Step`), errors, stats, rejections,
completion marker and parallel map. Imports `common`, `templates` and the recipe, never a step."""
