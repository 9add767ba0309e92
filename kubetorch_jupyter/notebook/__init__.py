"""The notebook: ``%%kt`` / ``%kt`` / ``%autokt`` magics and the cell client behind them."""
