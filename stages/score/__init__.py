"""Model-based scoring: IFD and IC-IFD, RDS+ representations, LESS gradient features."""
