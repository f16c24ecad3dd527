from pmcllama.cli import main

main()
