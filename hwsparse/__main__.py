from hwsparse.cli import main

main()
