"""Print the include directory of the NVTX3 headers shipped by the `nvidia-nvtx` wheel.

Used by CMakeLists.txt at configure time; prints nothing when the wheel is absent.
The wheel's layout moved between releases (nvidia/nvtx/include, nvidia/cu13/include), so
search every `nvidia` namespace path rather than hard-coding one.
"""
import importlib.util
import pathlib


def main() -> None:
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        for header in sorted(pathlib.Path(root).glob("*/include/nvtx3/nvToolsExt.h")):
            print(header.parent.parent)
            return


if __name__ == "__main__":
    main()
