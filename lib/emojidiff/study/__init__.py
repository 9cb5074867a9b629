"""Study stage of the study."""
