"""The Ray a command runs on (``connect``: a private local one or one it joins, every
job process pinned to it), what a cluster can ever hold (``capacity``), and storage
every node shares (``storage``)."""
