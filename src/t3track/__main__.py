from t3track.cli import main

main()
