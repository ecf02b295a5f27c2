# does not fit: sensor-etl fits no partition at mimer: berzelius: is for GPU jobs; berzelius-cpu: 2 nodes asked, at most 1
