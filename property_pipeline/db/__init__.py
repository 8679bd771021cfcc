"""Tables, migrations, and the status-table transitions."""
