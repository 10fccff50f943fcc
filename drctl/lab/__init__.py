"""The local lab: real servers on loopback (``servers``), an HTTP origin (``origin``), and the
lab that ties them into two sites described by an inventory (``lab``)."""
