"""Reading the inputs of a run: annotation tables, class lists, audio file lists.

Everything here reads and validates what a user hands precompute, before any audio is
decoded; planning (``precompute.plan``) turns it into shard jobs.

``annotations``    the annotation formats (RFCX, event CSV, Raven tables, reviewed tables, clip
                   lists, class folders), each a layout over one row reader, and the
                   ``[annotations]`` options
``class_folders``  one folder of clips per class, its name the class name as written
``manifest``       reading one table as a stream of validated rows, with file and line in every
                   message
``layout``         where a table keeps each field of a row (``Layout``; RFCX's own names)
``reviews``        a reviewer's verdicts in a selection table: what each makes of its selection
``references``     how a row names its recording: an id, or a file inside the audio directory
``row_table``      a validated row, the compact ``RowTable`` of many, and the rows dropped as
                   duplicates or for naming two files
``classes``        the class list: names, order, and the class index of every label
``audio_files``    the audio files a sliding-window run reads: a folder walked, or a file list
"""
