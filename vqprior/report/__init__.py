"""What a person looks at: per-epoch pictures and metric lines while training, plots, and the HTML run report."""
