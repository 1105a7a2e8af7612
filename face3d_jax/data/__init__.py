"""Data: preparing faces in photographs (dlib detection, landmarks, crops) and the
synthetic teacher world."""
