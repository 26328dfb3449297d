"""Progress bars for long work (tqdm), or nothing where they would only be noise."""


class _NoBar:
    n = 0

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def progress_bar(total: int, initial: int, unit: str, desc: str, enabled: bool = True,
                 **options):
    """`options` go to tqdm (e.g. unit_scale=True for bytes)."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True,
                **options)
