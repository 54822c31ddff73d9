//! NVRTC: compiling the embedded kernel sources to PTX (written next).
