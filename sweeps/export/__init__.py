"""Export a trial's student to a file that loads with PyTorch alone (TorchScript or torch.export)."""

from sweeps.export.student import FORMATS, Exported, export_student

__all__ = ["FORMATS", "Exported", "export_student"]
