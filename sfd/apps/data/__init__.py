"""Data sets of the applications: labelled images (`images`) and captioned sets (`captions`)."""
