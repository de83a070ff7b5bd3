"""What a person looks at: the HTML report with its figures, and the MLflow UI."""
