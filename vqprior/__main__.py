from vqprior.cli import main

main()
