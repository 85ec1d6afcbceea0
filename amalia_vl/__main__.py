from amalia_vl.cli import main

main()
